"""VL-T5 / VL-BART specifics: paper-size parameter counts, span corruption, the visual embedding's boxes, ITM
negatives, the VQA prompt the evaluation uses, grounding targets, generation and ITM scoring."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import SPECIALS, scene_texts, train_steps, wordpiece
from vlforge.components.models.masking import batch_generator
from vlforge.components.models.registry import ImageTextBatch, get_family
from vlforge.components.models.vlt5.family import decode_generated, task_context
from vlforge.components.models.vlt5.modeling import patch_boxes, region_of_point
from vlforge.components.models.vlt5.tasks import (
    CAPTION_PROMPT,
    ITM_PREFIX,
    box_region,
    build_task,
    check_sentinels,
    corrupt,
    encode_prompts,
    fill_spans,
    groundable_objects,
    itm_partners,
    prefixed,
    random_spans_noise_mask,
    span_sentinels,
    supported_tasks,
    vqa_prompt,
)
from vlforge.components.sources.shapes import make_scene, sample_key

from vlforge.errors import UserError

SMALL = {"image_size": 32, "max_text_length": 16}
FAMILIES = ("vl-t5", "vl-bart")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    task_words = "caption: image text match: true false span prediction: denoise text: visual grounding: caption region:"
    return wordpiece(tmp_path_factory, [*scene_texts(100), task_words], vocab_size=200)


def scene_batch(recipe, tokenizer, n: int = 8, with_facts: bool = True) -> ImageTextBatch:
    scenes = [make_scene(0, i) for i in range(n)]
    captions = [s.caption for s in scenes]
    enc = tokenizer(captions, padding="max_length", truncation=True, max_length=recipe.max_text_length, return_tensors="pt")
    pixels = torch.randn(n, 3, recipe.image_size, recipe.image_size, generator=torch.Generator().manual_seed(0))
    meta = [{"facts": s.facts()} if with_facts else {} for s in scenes]
    return ImageTextBatch(pixels, enc["input_ids"], enc["attention_mask"], captions, [sample_key(0, i) for i in range(n)],
                          meta=meta, tokenizer=tokenizer, max_text_length=recipe.max_text_length)


def tiny(name: str, tokenizer):
    family = get_family(name)
    recipe = family.recipe("tiny", SMALL)
    torch.manual_seed(0)
    return family, recipe, family.build_model(recipe, len(tokenizer), SPECIALS)


# ------------------------------------------------------------------------------------------------ sizes
def test_paper_size_parameter_counts() -> None:
    """Counted without the patch encoder (the ViT standing in for the paper's frozen, offline Faster R-CNN, which
    the paper's counts leave out); region tokens: 36 (the paper's 36 boxes = our 6x6 grid)."""
    def counts(name: str, vocab: int) -> tuple[int, int, int]:
        family = get_family(name)
        with torch.device("meta"):
            model = family.build_model(family.recipe("base"), vocab, SPECIALS)
        total = sum(p.numel() for p in model.parameters())
        encoder = sum(p.numel() for p in model.visual_embedding.image_encoder.parameters())
        visual = sum(p.numel() for p in model.visual_embedding.parameters())
        assert model.num_regions == 36
        return total - encoder, visual - encoder, total - visual

    # VL-T5: 224M in Cho et al. 2021 (the parameter count the project quotes for the paper's VL-T5, T5-base plus
    # the visual embedding). The backbone alone is t5-base: 222,903,552 with HF's padded 32,128-row vocabulary
    # (tied head), so with 32,100 text tokens + 36 region tokens it is 222,903,552 + 8 x 768.
    vl_t5, visual_t5, backbone_t5 = counts("vl-t5", 32_100)
    assert backbone_t5 == 222_903_552 + (32_100 + 36 - 32_128) * 768
    # visual embedding: feature Linear(768 -> 768) + RMSNorm, box Linear(5 -> 768) + RMSNorm, 2 image-order rows
    assert visual_t5 == (768 * 768 + 768) + 768 + (5 * 768 + 768) + 768 + 2 * 768
    assert abs(vl_t5 - 224_000_000) / 224_000_000 < 0.02, vl_t5
    # VL-BART: BART-base (Lewis et al. 2020; facebook/bart-base: 139,420,416 with 50,265 tokens) + 36 region rows
    # + the visual embedding (LayerNorms with bias) ~ 140.0M. The paper's own VL-BART count was not checked here.
    vl_bart, visual_bart, backbone_bart = counts("vl-bart", 50_265)
    assert backbone_bart == 139_420_416 + 36 * 768
    assert visual_bart == (768 * 768 + 768) + 2 * 768 + (5 * 768 + 768) + 2 * 768 + 2 * 768
    assert abs(vl_bart - (139_420_416 + 36 * 768 + visual_bart)) / vl_bart < 0.02


# ----------------------------------------------------------------------------------------- span corruption
@pytest.mark.parametrize("seed", range(6))
def test_span_corruption_targets_reconstruct_exactly_the_masked_spans(seed: int) -> None:
    captions = [make_scene(0, i).caption for i in range(12)] + ["a red circle", "circle"]
    for k, caption in enumerate(captions):
        gen = torch.Generator().manual_seed(seed * 100 + k)
        noise = random_spans_noise_mask(len(caption.split()), 0.3, 2.0, torch.Generator().manual_seed(seed * 100 + k))
        source, target = corrupt(caption, "<mask>", 0.3, 2.0, gen, "t5")
        words = caption.split()
        masked = [w for w, m in zip(words, noise) if m]
        assert 1 <= len(masked) <= max(1, len(words) - 1)
        assert target.replace("<mask>", " ").split() == masked  # the target holds the masked words, nothing else
        assert [w for w in source.split() if w != "<mask>"] == [w for w, m in zip(words, noise) if not m]
        spans = sum(1 for i, m in enumerate(noise) if m and (i == 0 or not noise[i - 1]))
        assert source.split().count("<mask>") == target.split().count("<mask>") == spans
        assert fill_spans(source, target, "<mask>") == caption
        # BART text infilling: the same corrupted source, the whole caption as target
        bart_source, bart_target = corrupt(caption, "<mask>", 0.3, 2.0, torch.Generator().manual_seed(seed * 100 + k), "bart")
        assert (bart_source, bart_target) == (source, caption)


def test_lm_task_labels_are_the_tokenised_span_targets(tokenizer) -> None:
    _family, recipe, model = tiny("vl-t5", tokenizer)
    batch = scene_batch(recipe, tokenizer)
    ctx = task_context(model, tokenizer, recipe)
    ids, _mask, labels = build_task("lm", ctx, batch.captions, batch.keys, batch.facts(), batch.input_ids,
                                   batch.attention_mask, batch_generator(batch.keys, 0))
    gen = batch_generator(batch.keys, 0)
    for i, caption in enumerate(batch.captions):
        _source, target = corrupt(caption, tokenizer.mask_token, ctx.span_density, ctx.mean_span_length, gen, "t5")
        want = tokenizer(target, add_special_tokens=False)["input_ids"][: ctx.max_target_length - 1] + [SPECIALS["eos"]]
        assert labels[i][labels[i] != -100].tolist() == want
        assert labels[i][0].item() == SPECIALS["mask"]  # each span starts with the sentinel
        assert ids[i, 0].item() == SPECIALS["bos"] and ids[i].tolist().count(SPECIALS["mask"]) >= 1


def t5_style_tokenizer(words: list[str], sentinels: int = 10):
    """A tokenizer laid out as a released T5's: pad, eos, unk and ``<extra_id_k>`` sentinels, no mask token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    extra = [f"<extra_id_{k}>" for k in range(sentinels)]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(["<pad>", "</s>", "<unk>", *extra, *words]))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   additional_special_tokens=extra)


def test_a_t5_tokenizer_corrupts_spans_with_its_numbered_sentinels(tokenizer) -> None:
    """A released T5's tokenizer (no mask token): span k reads <extra_id_k>, as T5 and VL-T5 pretrain; the text-t5
    and vl-t5 preflights take it, and vlforge's own tokenizer keeps its one <mask> for every span."""
    captions = [make_scene(0, i).caption for i in range(20)]
    t5_tok = t5_style_tokenizer(sorted({w for c in captions for w in c.split()}))
    sentinels = span_sentinels(t5_tok)
    assert sentinels == tuple(f"<extra_id_{k}>" for k in range(10)) and t5_tok.mask_token is None
    assert span_sentinels(tokenizer) == (tokenizer.mask_token,)
    several = 0
    for k, caption in enumerate(captions):
        source, target = corrupt(caption, sentinels, 0.3, 2.0, torch.Generator().manual_seed(k), "t5")
        marks = [w for w in source.split() if w.startswith("<extra_id_")]
        assert marks == list(sentinels[: len(marks)]) == [w for w in target.split() if w.startswith("<extra_id_")]
        assert fill_spans(source, target, sentinels) == caption
        assert t5_tok.unk_token_id not in t5_tok(source)["input_ids"]
        several += len(marks) > 1
    assert several  # spans after the first read <extra_id_1>, ...
    for name in ("text-t5", "vl-t5"):
        family = get_family(name)
        family.preflight(family.recipe("tiny", SMALL), t5_tok)
    bare = t5_style_tokenizer(["a", "b"], sentinels=0)
    with pytest.raises(UserError, match="neither T5's <extra_id_0> sentinels nor a mask token"):
        check_sentinels("text-t5", bare)


# -------------------------------------------------------------------------------------------- visual boxes
def test_visual_embedding_boxes_match_the_patch_grid(tokenizer) -> None:
    _family, recipe, model = tiny("vl-t5", tokenizer)
    grid = recipe.image_size // recipe.patch_size
    vis = model.visual_embedding
    boxes = vis.boxes()
    assert boxes.shape == (grid * grid, 5)
    for k in range(grid * grid):
        row, col = divmod(k, grid)
        assert boxes[k, :4].tolist() == pytest.approx([col / grid, row / grid, (col + 1) / grid, (row + 1) / grid])
        assert boxes[k, 4].item() == pytest.approx(1 / grid**2)
        cx, cy = (boxes[k, 0] + boxes[k, 2]) / 2, (boxes[k, 1] + boxes[k, 3]) / 2
        assert region_of_point(float(cx), float(cy), grid) == k
    assert boxes[:, 0].min() == 0 and boxes[:, 2].max() == 1  # the grid tiles the whole image
    # the boxes follow the ViT's patch order: light one patch, only that region's feature projection moves
    proj = vis.image_encoder.embeddings.patch_embeddings
    with torch.no_grad():
        for k in (0, grid - 1, grid, grid * grid - 1):
            row, col = divmod(k, grid)
            img = torch.zeros(1, 3, recipe.image_size, recipe.image_size)
            img[..., row * recipe.patch_size:(row + 1) * recipe.patch_size, col * recipe.patch_size:(col + 1) * recipe.patch_size] = 1
            out = proj(img) - proj(torch.zeros_like(img))
            assert out.abs().sum(-1)[0].nonzero().flatten().tolist() == [k]
    assert patch_boxes(2).tolist() == [[0, 0, 0.5, 0.5], [0.5, 0, 1, 0.5], [0, 0.5, 0.5, 1], [0.5, 0.5, 1, 1]]


def test_grounding_targets_the_region_of_the_object_centre(tokenizer) -> None:
    _family, recipe, model = tiny("vl-bart", tokenizer)
    batch = scene_batch(recipe, tokenizer)
    ctx = task_context(model, tokenizer, recipe)
    ids, _mask, labels = build_task("grounding", ctx, batch.captions, batch.keys, batch.facts(), batch.input_ids,
                                   batch.attention_mask, batch_generator(batch.keys, 3))
    gen = batch_generator(batch.keys, 3)
    for i, (key, facts) in enumerate(zip(batch.keys, batch.facts())):
        items = groundable_objects(key, facts)
        if not items:
            assert (labels[i] == -100).all()
            continue
        phrase, box = items[int(torch.randint(len(items), (1,), generator=gen))]
        region = box_region(box, ctx.grid)
        assert labels[i][labels[i] != -100].tolist() == [ctx.text_vocab + region, SPECIALS["eos"]]
        assert torch.equal(ids[i], encode_prompts(ctx, [f"visual grounding: {phrase}"])[0][0])
        # the object's centre lies inside that region's box
        x1, y1, x2, y2 = patch_boxes(ctx.grid)[region].tolist()
        assert x1 <= (box[0] + box[2]) / 2 <= x2 and y1 <= (box[1] + box[3]) / 2 <= y2
    assert decode_generated([ctx.text_vocab + 5, SPECIALS["eos"], 7], tokenizer, ctx.text_vocab, SPECIALS) == "<vis_extra_id_5>"


# --------------------------------------------------------------------------------------------------- ITM
def test_itm_negatives_are_real_mismatches(tokenizer) -> None:
    captions = ["a red circle", "a red circle", "a blue square", "two green stars", "a red circle", "a blue square"]
    keys = [f"k{i}" for i in range(len(captions))]
    seen_negative = False
    for seed in range(20):
        partner, matched = itm_partners(captions, keys, 0.5, torch.Generator().manual_seed(seed))
        for i, (j, m) in enumerate(zip(partner, matched)):
            if m:
                assert j == i
            else:
                seen_negative = True
                assert j != i and captions[j] != captions[i]  # another sample's caption, and a different one
    assert seen_negative
    # in the task: "true" exactly for the pairs that kept their caption, the prompt carries the partner's caption
    _family, recipe, model = tiny("vl-t5", tokenizer)
    batch = scene_batch(recipe, tokenizer)
    ctx = task_context(model, tokenizer, recipe)
    ids, _mask, labels = build_task("itm", ctx, batch.captions, batch.keys, batch.facts(), batch.input_ids,
                                   batch.attention_mask, batch_generator(batch.keys, 1))
    partner, matched = itm_partners(batch.captions, batch.keys, ctx.itm_negative_prob, batch_generator(batch.keys, 1))
    true_ids = tokenizer("true", add_special_tokens=False)["input_ids"] + [SPECIALS["eos"]]
    false_ids = tokenizer("false", add_special_tokens=False)["input_ids"] + [SPECIALS["eos"]]
    assert not all(matched) and any(matched)
    for i, (j, m) in enumerate(zip(partner, matched)):
        assert labels[i][labels[i] != -100].tolist() == (true_ids if m else false_ids)
        want = encode_prompts(ctx, [f"{ITM_PREFIX} {batch.captions[j]}"])[0][0]
        assert torch.equal(ids[i], want)


# --------------------------------------------------------------------------------------------------- VQA
def test_vqa_training_input_is_exactly_the_evaluation_prompt(tokenizer) -> None:
    from vlforge.components.evaluation.vqa import answer_by_generation, questions_for

    _family, recipe, model = tiny("vl-t5", tokenizer)
    batch = scene_batch(recipe, tokenizer)
    samples = [SimpleNamespace(key=k, meta={"facts": f}) for k, f in zip(batch.keys, batch.facts())]
    asked: list[str] = []

    def fake_generate(images, prompts, max_new_tokens):
        asked.extend(prompts)
        return [""] * len(prompts)

    ctx_eval = SimpleNamespace(samples=samples, images=lambda: [None] * len(samples), generate=fake_generate)
    items = questions_for(ctx_eval)
    answer_by_generation(ctx_eval, items)
    eval_prompts: dict[str, dict[str, str]] = {}
    for (i, q), prompt in zip(items, asked):
        eval_prompts.setdefault(samples[i].key, {})[prompt] = q.answer
    assert all(p == vqa_prompt(q.question) for (_, q), p in zip(items, asked))

    ctx = task_context(model, tokenizer, recipe)
    ids, _mask, labels = build_task("vqa", ctx, batch.captions, batch.keys, batch.facts(), batch.input_ids,
                                   batch.attention_mask, batch_generator(batch.keys, 2))
    for i, key in enumerate(batch.keys):
        matches = [p for p in eval_prompts[key] if torch.equal(encode_prompts(ctx, [p])[0][0], ids[i])]
        assert matches, f"sample {i}: the training prompt is none of the evaluation's prompts"
        answer = tokenizer(eval_prompts[key][matches[0]], add_special_tokens=False)["input_ids"] + [SPECIALS["eos"]]
        assert labels[i][labels[i] != -100].tolist() == answer


def test_facts_tasks_are_skipped_without_facts(tokenizer) -> None:
    family, recipe, model = tiny("vl-bart", tokenizer)
    batch = scene_batch(recipe, tokenizer, with_facts=False)
    assert supported_tasks(batch.captions, batch.keys, batch.facts()) == {"lm", "caption", "itm"}
    assert supported_tasks(batch.captions, batch.keys, scene_batch(recipe, tokenizer).facts()) == {
        "lm", "caption", "itm", "vqa", "grounding", "grounded_caption"}
    for step in range(6):
        batch.step = step
        out = family.training_step(model, batch, recipe)
        assert torch.isfinite(out["loss"])
        assert any(k in out for k in ("loss_lm", "loss_caption", "loss_itm"))


# ------------------------------------------------------------------------------------ generate and score
@pytest.mark.parametrize("name", FAMILIES)
def test_generate_texts_and_itm_scores(name: str, tokenizer, tmp_path: Path) -> None:
    family, recipe, model = tiny(name, tokenizer)
    batch = scene_batch(recipe, tokenizer, n=4)
    model.train()
    family.training_step(model, batch, recipe)
    family.save(model, tmp_path / "ckpt", recipe)
    model = family.load(tmp_path / "ckpt").eval()
    for prompts in (None, [CAPTION_PROMPT, vqa_prompt("how many objects are there?"), "visual grounding: a red circle", ""]):
        texts = family.generate_texts(model, batch.pixel_values, tokenizer, prompts, 5)
        assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
    scores = family.score_pairs(model, batch.pixel_values, batch.input_ids, batch.attention_mask, tokenizer)
    assert scores.shape == (4,) and torch.isfinite(scores).all()
    # the log-odds are log P(true) - log P(false) of the decoder after "image text match: <caption>"
    ctx = task_context(model, tokenizer)
    ids, mask = prefixed(ctx, ITM_PREFIX, batch.input_ids, batch.attention_mask)
    logp = []
    with torch.no_grad():
        for word in ("true", "false"):
            labels = torch.tensor(tokenizer(word, add_special_tokens=False)["input_ids"] + [SPECIALS["eos"]]).repeat(4, 1)
            logits = model(pixel_values=batch.pixel_values, input_ids=ids, attention_mask=mask, labels=labels).logits
            logp.append(torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1).sum(-1))
    assert torch.allclose(scores, logp[0] - logp[1], atol=1e-4)


@pytest.mark.parametrize("name", FAMILIES)
def test_region_encoder_is_a_frozen_image_teacher_and_the_checkpoint_keeps_it(name: str, tokenizer, tmp_path: Path) -> None:
    """region_features: teacher (the paper's frozen pretrained detector): the image-teacher's ViT weights are copied
    into the region encoder, which the loop freezes; training leaves them unchanged; the checkpoint reloads alone."""
    from vlforge.components.models.registry import apply_freeze
    from vlforge.components.stages import missing_teachers

    teacher_family = get_family("image-teacher")
    t_recipe = teacher_family.recipe("tiny", {"image_size": 32, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "patch_size": 8})
    torch.manual_seed(1)
    teacher = teacher_family.build_model(t_recipe, len(tokenizer), SPECIALS)
    teacher_family.save(teacher, tmp_path / "teacher", t_recipe)

    family = get_family(name)
    assert missing_teachers(name, family.recipe("tiny", SMALL)) == {"region_encoder": "image-teacher"}
    assert missing_teachers(name, family.recipe("tiny", {**SMALL, "region_features": "scratch"})) == {}
    recipe = family.recipe("tiny", {**SMALL, "region_encoder": str(tmp_path / "teacher")})
    model = family.build_model(recipe, len(tokenizer), SPECIALS)
    encoder = model.visual_embedding.image_encoder
    assert len(encoder.layers) == 1 and encoder.layernorm.weight.shape == (32,)
    vit = teacher.vit.state_dict()
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, vit[key]), key
    counts = apply_freeze(family, model, recipe)
    assert counts["trainable_params"] == counts["total_params"] - sum(p.numel() for p in encoder.parameters())
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    batch = scene_batch(recipe, tokenizer)
    train_steps(family, model, batch, recipe, 2, lr=1e-2)
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    family.save(model.eval(), tmp_path / "student", recipe)
    reloaded = family.load(tmp_path / "student").eval()
    with torch.no_grad():
        a = model.visual_embedding(batch.pixel_values, model.get_input_embeddings()(model.region_token_ids()))
        b = reloaded.visual_embedding(batch.pixel_values, reloaded.get_input_embeddings()(reloaded.region_token_ids()))
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------ initialisation
@pytest.mark.parametrize("name", FAMILIES)
def test_the_tiny_decoder_hears_the_encoder(name: str, tokenizer) -> None:
    """At initialisation the tiny model's first decoded token must depend on the prompt and the image, or the
    training signal that tells captioning from matching is too weak to find (tiny VL-BART with BART's std 0.02 at
    width 128: the prompt moved the first-token logits 0.9%, and it wrote "false" for every emoji caption)."""
    family = get_family(name)
    recipe = family.recipe("tiny", {**SMALL, "region_features": "scratch"})
    torch.manual_seed(0)
    model = family.build_model(recipe, len(tokenizer), SPECIALS).eval()
    batch = scene_batch(recipe, tokenizer, n=8)
    ctx = task_context(model, tokenizer)

    def first_logits(pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        ids, mask = encode_prompts(ctx, prompts)
        embeds, enc_mask = model.embed_inputs(pixels, ids, mask)
        start = torch.full((len(prompts), 1), model.config.decoder_start_token_id)
        return model(inputs_embeds=embeds, attention_mask=enc_mask, decoder_input_ids=start).logits[:, 0]

    with torch.no_grad():
        base = first_logits(batch.pixel_values, [CAPTION_PROMPT] * 8)
        other_image = first_logits(batch.pixel_values.roll(1, 0), [CAPTION_PROMPT] * 8)
        other_prompt = first_logits(batch.pixel_values, [f"{ITM_PREFIX} {c}" for c in batch.captions])
    for changed in (other_image, other_prompt):
        assert (changed - base).norm() / base.norm() > 0.05


@pytest.mark.parametrize("name", FAMILIES)
def test_captioning_fine_tuning_continues_a_pretrained_model(name: str, tokenizer, tmp_path: Path) -> None:
    """recipe tiny-caption with init_from (the paper's captioning fine-tuning): the model is the checkpoint itself
    (same weights, its frozen region encoder stays frozen, no teacher is trained again), only captioning trains, the
    saved recipe forgets init_from (so the evaluation's untrained baseline is a fresh model) and the family file
    keeps it; a model of another family or another tokenizer is a one-line error."""
    import json

    from vlforge.components.models.registry import FAMILY_FILE, apply_freeze, read_family_file
    from vlforge.components.stages import missing_teachers

    teacher_family = get_family("image-teacher")
    t_recipe = teacher_family.recipe("tiny", {"image_size": 32, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "patch_size": 8})
    teacher_family.save(teacher_family.build_model(t_recipe, len(tokenizer), SPECIALS), tmp_path / "teacher", t_recipe)
    family = get_family(name)
    pre_recipe = family.recipe("tiny", {**SMALL, "region_encoder": str(tmp_path / "teacher")})
    torch.manual_seed(0)
    pretrained = family.build_model(pre_recipe, len(tokenizer), SPECIALS)
    family.save(pretrained, tmp_path / "pre", pre_recipe)

    recipe = family.recipe("tiny-caption", {**SMALL, "init_from": str(tmp_path / "pre")})
    assert missing_teachers(name, recipe) == {} and "init_from" in family.artifact_fields
    model = family.build_model(recipe, len(tokenizer), SPECIALS)
    for (k, a), (_, b) in zip(pretrained.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), k
    counts = apply_freeze(family, model, recipe)
    encoder = model.visual_embedding.image_encoder
    assert counts["trainable_params"] == counts["total_params"] - sum(p.numel() for p in encoder.parameters())
    batch = scene_batch(recipe, tokenizer)
    for step in range(4):
        batch.step = step
        assert set(family.training_step(model, batch, recipe)) == {"loss", "loss_caption", "task_index"}
    family.save(model, tmp_path / "tuned", recipe)
    _, saved = read_family_file(tmp_path / "tuned")
    assert saved.init_from is None and json.loads((tmp_path / "tuned" / FAMILY_FILE).read_text())["init_from"] == str(tmp_path / "pre")

    with pytest.raises(UserError, match="holds a 'image-teacher'|holds no"):
        family.build_model(family.recipe("tiny-caption", {**SMALL, "init_from": str(tmp_path / "teacher")}), len(tokenizer), SPECIALS)
    with pytest.raises(UserError, match="trained with another tokenizer"):
        family.build_model(recipe, len(tokenizer) + 5, SPECIALS)
