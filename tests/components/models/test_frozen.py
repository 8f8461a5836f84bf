"""Frozen-specific checks (the shared battery covers recipes and the generic save/load): the paper-size model, the LM
really stays frozen (weights, gradients, dropout), the loss only targets caption/answer tokens, VQA items use the
evaluation's prompt, the few-shot prompt interleaves images and texts as the paper does, generation returns text,
and the checkpoint is self-contained."""
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SPECIALS, save_untrained
from vlforge.components.models.masking import batch_generator
from vlforge.components.models.registry import ImageTextBatch, apply_freeze, get_family
from vlforge.components.models.prefix_lm import (
    IGNORE_INDEX,
    IMAGE,
    TEXT,
    Segment,
    caption_or_vqa_texts,
    pack,
    text_segment,
    token_ids,
    vqa_prompt,
)
from vlforge.components.sources.scene_tasks import vqa_questions
from vlforge.components.sources.shapes import make_scene, sample_key

LM = {"image_size": 32, "max_text_length": 16, "hidden_size": 32, "num_layers": 2, "num_heads": 2}
SMALL = {"image_size": 32, "max_text_length": 16, "vision_width": 32, "vision_layers": 1, "vision_heads": 2}


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    return save_untrained("text-lm", LM, len(tokenizer), tmp_path_factory.mktemp("lm") / "lm")


def scene_batch(tokenizer, n: int = 4, size: int = 32, length: int = 16) -> ImageTextBatch:
    scenes = [make_scene(0, i) for i in range(n)]
    captions = [s.caption for s in scenes]
    enc = tokenizer(captions, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    pixels = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    return ImageTextBatch(pixels, enc["input_ids"], enc["attention_mask"], captions, [sample_key(0, i) for i in range(n)],
                          meta=[{"facts": s.facts()} for s in scenes], tokenizer=tokenizer, max_text_length=length)


def build(lm_dir: Path, tokenizer, **overrides):
    family = get_family("frozen")
    recipe = family.recipe("tiny", {**SMALL, "language_model": str(lm_dir), **overrides})
    torch.manual_seed(0)
    model = family.build_model(recipe, len(tokenizer), SPECIALS)
    return family, recipe, model


def test_paper_size_parameter_count() -> None:
    # What is counted: the vision encoder + the prefix map + the frozen LM. ResNet-50 has 25,557,032 parameters
    # (He et al. 2016, as in torchvision) of which the 1000-class head is 2,048 x 1,000 + 1,000 = 2,049,000 (Frozen
    # uses the pooled feature, no head); the prefix map is Linear(2,048, n=2 x 768); the LM stands in with GPT-2 small
    # (124,439,808, Radford et al. 2019 as released) for the paper's 7B LM.
    family = get_family("frozen")
    recipe = family.recipe("base")
    with torch.device("meta"):
        model = family.build_model(recipe, 49408, SPECIALS)
    vision = 25_557_032 - 2_049_000
    prefix_map = 2048 * 2 * 768 + 2 * 768
    counts = apply_freeze(family, model, recipe)
    assert abs(counts["total_params"] - (vision + prefix_map + 124_439_808)) / 151e6 < 0.02, counts
    assert abs(counts["trainable_params"] - (vision + prefix_map)) / (vision + prefix_map) < 0.02, counts
    assert recipe.n_prefix == 2


def test_language_model_stays_frozen_and_in_eval_mode(lm_dir: Path, tokenizer) -> None:
    family, recipe, model = build(lm_dir, tokenizer)
    apply_freeze(family, model, recipe)
    assert not any(p.requires_grad for p in model.language_model.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("language_model."))
    lm_before = {n: p.detach().clone() for n, p in model.language_model.named_parameters()}
    vis_before = model.visual_prefix.weight.detach().clone()
    model.train()
    assert model.vision_encoder.training and not model.language_model.training  # no LM dropout while training
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = scene_batch(tokenizer)
    for step in range(3):
        batch.step = step
        out = family.training_step(model, batch, recipe)
        opt.zero_grad()
        out["loss"].backward()
        assert all(p.grad is None for p in model.language_model.parameters())
        assert model.visual_prefix.weight.grad.abs().sum() > 0  # gradients flow through the frozen LM
        opt.step()
    for n, p in model.language_model.named_parameters():
        assert torch.equal(p, lm_before[n]), n
    assert not torch.equal(model.visual_prefix.weight, vis_before)
    # the LM itself matches the teacher checkpoint bit for bit
    teacher = get_family("text-lm").load(lm_dir)
    for (n, p), (_, q) in zip(model.language_model.state_dict().items(), teacher.state_dict().items()):
        assert torch.equal(p, q), n


def test_loss_targets_only_caption_and_answer_tokens(lm_dir: Path, tokenizer) -> None:
    _, recipe, model = build(lm_dir, tokenizer)
    batch = scene_batch(tokenizer, n=8)
    texts, is_vqa = caption_or_vqa_texts(batch, 3, 4, 0.5, batch_generator(batch.keys, 0))
    assert any(is_vqa) and not all(is_vqa)
    prefix = model(batch.pixel_values)
    wte = model.language_model.get_input_embeddings()
    packed = pack([[Segment(prefix[i], IMAGE), text_segment(wte, inp), text_segment(wte, tgt, target=True)]
                   for i, (inp, tgt) in enumerate(texts)])
    assert (packed.labels[:, : recipe.n_prefix] == IGNORE_INDEX).all()  # never predict the visual prefix
    assert (packed.kinds[:, : recipe.n_prefix] == IMAGE).all()
    for b, (inp, tgt) in enumerate(texts):
        start = recipe.n_prefix + len(inp)
        assert (packed.labels[b, :start] == IGNORE_INDEX).all()  # <bos> and the question are inputs only
        assert packed.labels[b, start : start + len(tgt)].tolist() == tgt
        assert (packed.labels[b, start + len(tgt):] == IGNORE_INDEX).all()
        assert tgt[-1] == SPECIALS["eos"]
        if not is_vqa[b]:  # captioning: the caption's tokens after <bos>, as the loop tokenised it
            n = int(batch.attention_mask[b].sum())
            assert inp == [SPECIALS["bos"]] and tgt == batch.input_ids[b, 1:n].tolist()


def test_vqa_items_use_the_evaluation_prompt(tokenizer) -> None:
    batch = scene_batch(tokenizer, n=6)
    texts, is_vqa = caption_or_vqa_texts(batch, 3, 4, 1.0, batch_generator(batch.keys, 0))
    assert all(is_vqa)
    for (inp, tgt), key, facts in zip(texts, batch.keys, batch.facts()):
        options = {(vqa_prompt(q.question), q.answer) for q in vqa_questions(key, facts)}
        hit = [(p, a) for p, a in options if inp == [3, *token_ids(tokenizer, p)] and tgt == [*token_ids(tokenizer, " " + a), 4]]
        assert hit, (tokenizer.decode(inp), tokenizer.decode(tgt))
    captions, flags = caption_or_vqa_texts(batch, 3, 4, 0.0, batch_generator(batch.keys, 0))
    assert not any(flags) and all(inp == [3] for inp, _ in captions)


def test_few_shot_prompt_interleaves_images_and_texts(lm_dir: Path, tokenizer) -> None:
    family, recipe, model = build(lm_dir, tokenizer)
    model.eval()
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    shots = [(pixels[0], "question: how many objects are there? answer: two"), (pixels[1], "a red circle")]
    query = "question: how many objects are there? answer:"
    with torch.no_grad():
        segments = family.few_shot_sequence(model, shots, pixels[2], query, tokenizer)
        expected_prefix = model(pixels)
    assert [s.kind for s in segments] == [IMAGE, TEXT, IMAGE, TEXT, IMAGE, TEXT]
    for k, seg in enumerate(segments[0::2]):  # each image's own prefix, in order (the query's last)
        assert seg.embeds.shape[0] == recipe.n_prefix
        assert torch.allclose(seg.embeds, expected_prefix[k], atol=1e-6)
    bos, eos = SPECIALS["bos"], SPECIALS["eos"]
    assert segments[1].ids.tolist() == [bos, *token_ids(tokenizer, shots[0][1]), eos]
    assert segments[3].ids.tolist() == [bos, *token_ids(tokenizer, shots[1][1]), eos]
    assert segments[5].ids.tolist() == [bos, *token_ids(tokenizer, query)]  # the query is left open
    wte = model.language_model.get_input_embeddings()
    assert torch.equal(segments[5].embeds, wte(segments[5].ids))
    with torch.no_grad():
        answer = family.few_shot_generate(model, shots, pixels[2], query, tokenizer, 3)
        many = shots * 8  # longer than the LM's 128 positions: generation keeps the most recent ones
        assert sum(s.embeds.shape[0] for s in family.few_shot_sequence(model, many, pixels[2], query, tokenizer)) > 128
        long_answer = family.few_shot_generate(model, many, pixels[2], query, tokenizer, 3)
    assert isinstance(answer, str) and isinstance(long_answer, str)


def test_generation_and_self_contained_checkpoint(lm_dir: Path, tokenizer, tmp_path: Path) -> None:
    family, _, model = build(lm_dir, tokenizer)
    model.eval()
    batch = scene_batch(tokenizer)
    captions = family.generate_texts(model, batch.pixel_values, tokenizer, None, 5)
    answers = family.generate_texts(model, batch.pixel_values, tokenizer, [vqa_prompt("what shape is the red object?")] * 4, 3)
    assert len(captions) == len(answers) == 4 and all(isinstance(t, str) for t in captions + answers)
    # padding on the left does not change a prompt's continuation
    alone = family.generate_texts(model, batch.pixel_values[:1], tokenizer, ["a"], 5)
    mixed = family.generate_texts(model, batch.pixel_values[:2], tokenizer, ["a", vqa_prompt("how many objects are there?")], 5)
    assert alone[0] == mixed[0]
    # the checkpoint holds the LM: it loads and scores identically with the teacher directory gone
    moved = tmp_path / "lm-copy"
    shutil.copytree(lm_dir, moved)
    family2, recipe2, model2 = build(moved, tokenizer)
    family2.save(model2, tmp_path / "ckpt", recipe2)
    shutil.rmtree(moved)
    loaded = family2.load(tmp_path / "ckpt").eval()
    model2.eval()
    with torch.no_grad():
        assert torch.equal(family2.training_step(model2, batch, recipe2)["loss"], family2.training_step(loaded, batch, recipe2)["loss"])
