"""PromptFuse-specific checks: only the prompts train (paper size and tiny), the frozen CLIP and LM are the teachers'
and do not move, BlindPrompt's mask really keeps prompt positions from seeing the image and text, the sequence order
options, image resizing to CLIP's resolution, and generation."""
from pathlib import Path

import pytest
import torch
from conftest import SPECIALS, save_untrained, train_steps
from vlforge.components.models.promptfuse.family import blocked, conditioned_rows
from vlforge.components.models.registry import ImageTextBatch, apply_freeze, get_family
from vlforge.components.models.prefix_lm import (
    IMAGE,
    PROMPT,
    TEXT,
    attention_mask_4d,
    pack,
    run_lm,
)
from vlforge.components.sources.shapes import make_scene, sample_key

LM = {"image_size": 32, "max_text_length": 16, "hidden_size": 32, "num_layers": 2, "num_heads": 2}
CLIP = {"image_size": 32, "max_text_length": 16, "vision_width": 32, "vision_layers": 1, "vision_heads": 2,
        "text_width": 32, "text_layers": 1, "text_heads": 2, "embed_dim": 32}
SMALL = {"image_size": 32, "max_text_length": 16, "n_prompts": 5}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> dict[str, str]:
    out = tmp_path_factory.mktemp("teachers")
    dirs = {}
    for field, name, overrides in (("language_model", "text-lm", LM), ("image_encoder", "clip", CLIP),
                                   ("narrow_clip", "clip", {**CLIP, "embed_dim": 16})):
        dirs[field] = str(save_untrained(name, overrides, len(tokenizer), out / field))
    return dirs


def build(teachers: dict[str, str], tokenizer, **overrides):
    family = get_family("promptfuse")
    fields = {"language_model": teachers["language_model"], "image_encoder": teachers["image_encoder"]}
    recipe = family.recipe("tiny", {**SMALL, **fields, **overrides})
    torch.manual_seed(0)
    return family, recipe, family.build_model(recipe, len(tokenizer), SPECIALS)


def scene_batch(tokenizer, n: int = 4, size: int = 32) -> ImageTextBatch:
    scenes = [make_scene(0, i) for i in range(n)]
    captions = [s.caption for s in scenes]
    enc = tokenizer(captions, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    pixels = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    return ImageTextBatch(pixels, enc["input_ids"], enc["attention_mask"], captions, [sample_key(0, i) for i in range(n)],
                          meta=[{"facts": s.facts()} for s in scenes], tokenizer=tokenizer, max_text_length=16)


def test_paper_size_trains_only_the_prompts() -> None:
    # Trainable: the paper's 20 prompts at width 768 (~15K parameters per modality, Liang et al. 2022) = 15,360.
    # Total: + CLIP ViT-B/32's image tower with its projection, 87,849,216 as released by OpenAI (Radford et al. 2021;
    # "visual" incl. the 768 x 512 projection), + GPT-2 small, 124,439,808 (Radford et al. 2019 as released).
    family = get_family("promptfuse")
    recipe = family.recipe("base")
    with torch.device("meta"):
        model = family.build_model(recipe, 49408, SPECIALS)
    counts = apply_freeze(family, model, recipe)
    assert counts["trainable_params"] == 20 * 768
    expected = 87_849_216 + 124_439_808 + 20 * 768
    assert abs(counts["total_params"] - expected) / expected < 0.02, counts
    assert model.image_map is not None and tuple(model.image_map.shape) == (512, 768)  # fixed buffer, not a parameter


@pytest.mark.parametrize("clip_field", ["image_encoder", "narrow_clip"])
def test_only_prompts_train_and_teachers_stay_put(teachers, tokenizer, clip_field: str) -> None:
    family, recipe, model = build({**teachers, "image_encoder": teachers[clip_field]}, tokenizer)
    counts = apply_freeze(family, model, recipe)
    assert counts["trainable_params"] == recipe.n_prompts * model.language_model.config.n_embd == 5 * 32
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompts"]
    assert (model.image_map is None) == (clip_field == "image_encoder")  # a fixed map only where widths differ
    clip = get_family("clip").load(Path(teachers[clip_field]))
    for n, p in clip.vision_model.state_dict().items():  # the CLIP teacher's own image tower
        assert torch.equal(model.image_encoder.vision_model.state_dict()[n], p), n
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n != "prompts"}
    prompts = model.prompts.detach().clone()
    model.train()
    assert not model.language_model.training and not model.image_encoder.training
    train_steps(family, model, scene_batch(tokenizer), recipe, 3, lr=1e-2, params=[model.prompts])
    for n, p in model.named_parameters():
        if n != "prompts":
            assert torch.equal(p, frozen[n]), n
    assert not torch.equal(model.prompts, prompts)


def prompt_states(model, pixels: torch.Tensor, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer-1 hidden states at the prompt positions and the packed kinds, for one sample."""
    image, prompts = model(pixels[None])
    packed = pack(conditioned_rows(model, image, prompts, [(ids, [])]))
    with torch.no_grad():
        hidden = run_lm(model.language_model, packed, blocked(model), output_hidden_states=True).hidden_states[1]
    return hidden[0][packed.kinds[0] == PROMPT], packed.kinds[0]


def test_blind_prompt_blocks_prompt_to_input_attention(teachers, tokenizer) -> None:
    pix = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    ids_a, ids_b = [3, 10, 11, 12], [3, 40, 41, 42]
    _, _, blind = build(teachers, tokenizer, blind_prompt=True)
    blind.eval()
    base, kinds = prompt_states(blind, pix[0], ids_a)
    assert kinds.tolist() == [IMAGE] + [PROMPT] * 5 + [TEXT] * 4  # after_image: [image; prompts; text]
    assert torch.allclose(prompt_states(blind, pix[1], ids_a)[0], base, atol=1e-6)  # another image: same prompts
    assert torch.allclose(prompt_states(blind, pix[0], ids_b)[0], base, atol=1e-6)  # other text: same prompts
    # without the mask the prompts after the image do read it (so the check above can fail)
    _, _, seeing = build(teachers, tokenizer, blind_prompt=False)
    seeing.eval()
    assert not torch.allclose(prompt_states(seeing, pix[1], ids_a)[0], prompt_states(seeing, pix[0], ids_a)[0], atol=1e-4)
    # the paper's order puts the prompts first, where a causal LM keeps them blind anyway
    _, _, first = build(teachers, tokenizer, prompt_position="first")
    first.eval()
    states, kinds = prompt_states(first, pix[0], ids_a)
    assert kinds.tolist() == [PROMPT] * 5 + [IMAGE] + [TEXT] * 4
    assert torch.allclose(prompt_states(first, pix[1], ids_b)[0], states, atol=1e-6)


def test_blind_mask_shape_and_rules() -> None:
    kinds = torch.tensor([[IMAGE, PROMPT, PROMPT, TEXT, TEXT, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    allowed = attention_mask_4d(mask, kinds, {PROMPT: (IMAGE, TEXT)})[0, 0]
    assert allowed.shape == (6, 6)
    assert allowed[1].tolist() == [False, True, False, False, False, False]  # prompt 1: itself only
    assert allowed[2].tolist() == [False, True, True, False, False, False]  # prompt 2: the prompts up to it
    assert allowed[4].tolist() == [True, True, True, True, True, False]  # text: everything before it, no padding
    assert not allowed.triu(1).any()  # causal


def test_resizes_images_to_the_clip_resolution_and_generates(teachers, tokenizer) -> None:
    family, _, model = build(teachers, tokenizer, image_size=48)
    model.eval()
    batch = scene_batch(tokenizer, n=2, size=48)
    with torch.no_grad():
        image, _ = model(batch.pixel_values)
        small = torch.nn.functional.interpolate(batch.pixel_values, size=(32, 32), mode="bilinear", align_corners=False)
        assert torch.allclose(image, model(small)[0], atol=1e-6)
    texts = family.generate_texts(model, batch.pixel_values, tokenizer, None, 5)
    answers = family.generate_texts(model, batch.pixel_values, tokenizer, ["question: how many objects are there? answer:"] * 2, 3)
    assert len(texts) == len(answers) == 2 and all(isinstance(t, str) for t in texts + answers)
