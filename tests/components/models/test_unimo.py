"""UNIMO-specific checks (the shared battery in test_families.py covers learning, save/load and generation):
the paper-size parameter count, that facts-based rewrites change exactly the fact they claim (and positives keep
every fact), the seq2seq attention mask, the three data streams of one step, the contrastive positives, and the
retrieval encodings."""
import random
from pathlib import Path

import pytest
import torch
from conftest import SPECIALS, scene_texts, wordpiece
from vlforge.components.models.registry import ImageTextBatch, get_family
from vlforge.components.models.unimo.family import (
    cmcl_texts,
    prepare_inputs,
    split_streams,
)
from vlforge.components.models.unimo.rewrites import (
    REWRITE_KINDS,
    holds,
    negative_rewrite,
    objects_to_facts,
    positive_rewrites,
    scene_objects,
)
from vlforge.components.models.attention import seq2seq_attention_mask
from vlforge.components.sources.shapes import (
    INVERSE_RELATION,
    ShapeObject,
    make_scene,
    sample_key,
)

from vlforge.errors import UserError

SMALL = {"image_size": 32, "max_text_length": 16}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    return wordpiece(tmp_path_factory, scene_texts(200, "prompted"))


def scene_batch(tokenizer, n: int = 8, facts: bool = True, start: int = 0) -> ImageTextBatch:
    from vlforge.components.training.loop import word_id_tensor

    scenes = [make_scene(0, i) for i in range(start, start + n)]
    captions = [s.caption for s in scenes]
    enc = tokenizer(captions, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    # each image is filled with its row index, so a row's image can be traced through the passes
    pixels = torch.arange(start, start + n, dtype=torch.float)[:, None, None, None].expand(n, 3, 32, 32).clone()
    meta = [{"facts": s.facts(), "label": s.label} if facts else {} for s in scenes]
    return ImageTextBatch(pixels, enc["input_ids"], enc["attention_mask"], captions, [sample_key(0, i) for i in range(start, start + n)],
                          word_ids=word_id_tensor(enc, n), meta=meta, step=3, tokenizer=tokenizer, max_text_length=16)


def tiny_model(**overrides):
    family = get_family("unimo")
    recipe = family.recipe("tiny", {**SMALL, **overrides})
    torch.manual_seed(0)
    return family, recipe, family.build_model(recipe, 160, SPECIALS)


# ---------------------------------------------------------------------------------------------- paper size


def test_base_recipe_has_unimo_base_size() -> None:
    family = get_family("unimo")
    with torch.device("meta"):
        model = family.build_model(family.recipe("base"), 49408, SPECIALS)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert len(model.encoder.layer) == 12 and model.config.hidden_size == 768 and model.config.vocab_size == 50265
    # The text side is RoBERTa-base (UNIMO-base is initialised from it, Li et al. 2021): embeddings
    # (50,265 x 768 words, 514 positions, LayerNorm) + 12 layers = 124,055,040 in RobertaModel without its pooler,
    # plus our second token type (768, the image's).
    roberta_base_no_pooler = 50265 * 768 + 514 * 768 + 768 + 2 * 768 + 12 * (4 * (768 * 768 + 768) + 2 * 768
                                                                           + 2 * 768 * 3072 + 3072 + 768 + 2 * 768)
    assert roberta_base_no_pooler == 124_055_040
    assert count(model.embeddings) + count(model.encoder) == roberta_base_no_pooler + 768
    # Whole model vs the paper's size: RoBERTa-base is "125M" parameters (Liu et al. 2019; fairseq's roberta.base,
    # word-embedding table and LM head included), + what UNIMO adds for images, here the ViT-B/16 patch embedding
    # with [IMG], mask token, 197 positions and LayerNorm (744,960) and the masked-patch head (590,592). (The paper
    # projects 2048-d region features instead: 2048 x 768 ~ 1.6M; it states no total of its own.)
    expected = 125_000_000 + 744_960 + 590_592
    total = count(model)
    assert abs(total - expected) / expected < 0.02, (total, expected)


# ----------------------------------------------------------------------------------------------- rewrites


def _kinds(facts: dict) -> list[tuple[str, str, str]]:
    return [(o["color"], o["shape"], o["size"]) for o in facts["objects"]]


def test_every_caption_holds_in_its_scene_and_not_in_others() -> None:
    scenes = [make_scene(0, i) for i in range(150)]
    facts = [s.facts() for s in scenes]
    true_elsewhere = 0
    for i, scene in enumerate(scenes):
        assert holds(scene.caption, facts[i]) is True, scene.caption
        true_elsewhere += sum(bool(holds(scene.caption, facts[j])) for j in range(150) if j != i)
    assert true_elsewhere < 0.02 * 150 * 149  # a caption is rarely true of another scene: the verifier is not lax
    assert holds("a cat on a mat", make_scene(0, 0).facts()) is None


def test_holds_follows_the_relation_the_scene_has() -> None:
    a = ShapeObject("circle", "red", "small", (0.1, 0.4, 0.28, 0.58))
    b = ShapeObject("square", "blue", "large", (0.5, 0.4, 0.84, 0.74))
    facts = objects_to_facts([a, b], {"background": [0, 0, 0]})
    assert holds("a red circle left of a blue square", facts) is True
    assert holds("a blue square right of a small red circle", facts) is True
    assert holds("a red circle right of a blue square", facts) is False
    assert holds("a large red circle left of a blue square", facts) is False  # wrong size
    assert holds("a red circle", facts) is False  # the caption must name every object


def test_negative_rewrites_change_exactly_the_claimed_fact() -> None:
    seen = dict.fromkeys(REWRITE_KINDS, 0)
    for i in range(120):
        facts = make_scene(0, i).facts()
        for kind in REWRITE_KINDS:
            rewrite = negative_rewrite(facts, kind, random.Random(i))
            if rewrite is None:
                assert kind == "relation"  # colour and shape can always change
                continue
            seen[kind] += 1
            assert holds(rewrite.text, facts) is False, (kind, rewrite.text)  # a real negative of the image
            assert holds(rewrite.text, rewrite.facts) is True  # and a faithful caption of the changed scene
            before, after = facts["objects"], rewrite.facts["objects"]
            changed = [k for k in range(len(before)) if before[k] != after[k]]
            if kind in ("color", "shape"):
                other = "shape" if kind == "color" else "color"
                assert len(changed) == 1
                k = changed[0]
                assert before[k][kind] != after[k][kind]
                assert (before[k][other], before[k]["size"], before[k]["bbox"]) == (after[k][other], after[k]["size"], after[k]["bbox"])
            else:  # two objects of different kinds traded places; attributes kept, their relation inverted
                assert _kinds(facts) == _kinds(rewrite.facts)
                assert len(changed) == 2
                p, q = changed
                assert before[p]["bbox"] == after[q]["bbox"] and before[q]["bbox"] == after[p]["bbox"]
                assert _kinds(facts)[p][:2] != _kinds(facts)[q][:2]
                rel = {(r["subject"], r["object"]): r["relation"] for r in facts["relations"]}
                new = {(r["subject"], r["object"]): r["relation"] for r in rewrite.facts["relations"]}
                assert new[(p, q)] == INVERSE_RELATION[rel[(p, q)]]
    assert all(v > 20 for v in seen.values()), seen


def test_positive_rewrites_keep_every_fact() -> None:
    made = 0
    for i in range(120):
        scene = make_scene(0, i)
        facts = scene.facts()
        for text in positive_rewrites(facts, scene.caption, random.Random(i), n=2):
            made += 1
            assert text != scene.caption
            assert holds(text, facts) is True
        assert scene_objects(facts) == list(scene.objects)  # rewriting never touches the facts
    assert made > 100


# ------------------------------------------------------------------------------------------ seq2seq mask


def test_seq2seq_mask_is_bidirectional_in_the_source_and_causal_in_the_target() -> None:
    image_valid = torch.ones(1, 3, dtype=torch.bool)
    text_valid = torch.tensor([[True, True, True, True, False]])  # the last text token is padding
    m = seq2seq_attention_mask(image_valid, text_valid, torch.tensor([2]))[0]
    img, src, tgt, pad = [0, 1, 2], [3, 4], [5, 6], 7
    for q in img + src:  # the source (image + 2 text tokens) sees the whole source and nothing of the target
        assert m[q, img + src].all() and not m[q, tgt].any() and not m[q, pad]
    assert m[5, img + src + [5]].all() and not m[5, 6] and not m[5, pad]  # target: source + itself
    assert m[6, img + src + tgt].all() and not m[6, pad]  # ... + the earlier target tokens
    bidirectional = seq2seq_attention_mask(image_valid, text_valid, None)[0]
    assert bidirectional[:pad, :pad].all() and not bidirectional[:pad, pad].any()


def test_target_tokens_never_change_the_source_or_earlier_targets() -> None:
    _, _, model = tiny_model()
    model.eval()
    pixels = torch.randn(1, 3, 32, 32)
    ids = torch.tensor([[3, 20, 21, 22, 23, 4]])
    changed = ids.clone()
    changed[0, 4] = 40  # a target token (the source is <bos> + 2 tokens)
    src = torch.tensor([3])
    with torch.no_grad():
        a = model.encode(pixel_values=pixels, input_ids=ids, source_len=src)
        b = model.encode(pixel_values=pixels, input_ids=changed, source_len=src)
    n_img = a.shape[1] - ids.shape[1]
    assert torch.allclose(a[:, : n_img + 4], b[:, : n_img + 4], atol=1e-6)  # image, source, earlier target
    assert not torch.allclose(a[:, n_img + 4 :], b[:, n_img + 4 :], atol=1e-4)  # that token and what follows


# -------------------------------------------------------------------------------------- the three streams


def test_one_step_builds_paired_image_only_and_text_only_streams(tokenizer) -> None:
    assert split_streams(8, "PPIT") == {"paired": [0, 1, 4, 5], "image": [2, 6], "text": [3, 7]}
    _, recipe, model = tiny_model()
    batch = scene_batch(tokenizer)
    inp = prepare_inputs(model, batch, recipe)
    row_of = lambda px: [int(p[0, 0, 0]) for p in px]  # each image is filled with its row index
    # images: paired and image-only ones clean for CMCL, then the image-only ones with masked patches (MIM)
    assert row_of(inp["image_pixels"]) == [0, 1, 4, 5, 2, 6, 2, 6]
    assert inp["image_is_cmcl"].tolist() == [True] * 6 + [False] * 2
    assert not inp["image_patch_mask"][:6].any() and inp["image_patch_mask"][6:].any(dim=1).all()
    # the joint pass sees only paired images (MLM, caption and VQA rows); text-only images appear nowhere
    assert set(row_of(inp["joint_pixels"])) == {0, 1, 4, 5}
    assert inp["joint_task"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # texts: captions of paired and text-only samples (+ rewrites) for CMCL, then the text-only captions masked
    n_cmcl = int(inp["text_is_cmcl"].sum())
    assert torch.equal(inp["text_ids"][:6], batch.input_ids[[0, 1, 4, 5, 3, 7]])
    mlm_rows = inp["text_mlm_labels"] != -100
    assert not mlm_rows[:n_cmcl].any() and mlm_rows[n_cmcl:].any(dim=1).all() and inp["text_ids"].shape[0] == n_cmcl + 2
    texts, _, _ = cmcl_texts(batch, recipe, split_streams(8, "PPIT"))
    for i in (2, 6):  # image-only samples' captions are not in the text stream
        assert batch.captions[i] not in texts[:6]
        assert not any(torch.equal(batch.input_ids[i], r) for r in inp["text_ids"])
    # seq2seq rows: the caption row's source is <bos>; labels only on the target
    caption_rows = inp["joint_task"] == 1
    assert (inp["joint_source_len"][caption_rows] == 1).all()
    assert (inp["joint_lm_labels"][caption_rows][:, 0] == -100).all()
    assert (inp["joint_lm_labels"][inp["joint_task"] == 0] == -100).all()
    vqa = inp["joint_ids"][inp["joint_task"] == 2][0]
    src = int(inp["joint_source_len"][inp["joint_task"] == 2][0])
    prompt, answer = tokenizer.decode(vqa[1:src]).replace(" ", ""), tokenizer.decode(vqa[src:], skip_special_tokens=True)
    assert prompt.startswith("question:") and prompt.endswith("answer:") and "<unk>" not in prompt
    assert answer in {"red", "green", "blue", "yellow", "purple", "orange", "cyan", "gray", "circle", "square",
                      "triangle", "star", "diamond", "cross", "one", "two", "three", "yes", "no", "left of",
                      "right of", "above", "below"}, answer


def test_contrastive_positives_come_from_facts_and_rewrites_are_negatives(tokenizer) -> None:
    _, recipe, model = tiny_model(rewrites="facts")
    batch = scene_batch(tokenizer)
    streams = split_streams(8, "PPIT")
    texts, owners, kinds = cmcl_texts(batch, recipe, streams)
    pos = prepare_inputs(model, batch, recipe)["cmcl_pos"]
    images = streams["paired"] + streams["image"]
    assert pos.shape == (len(images), len(texts))
    for a, i in enumerate(images):
        facts = batch.facts()[i]
        for b, text in enumerate(texts):
            assert bool(pos[a, b]) == holds(text, facts)
        if i in streams["paired"]:
            assert pos[a, texts.index(batch.captions[i])]
    assert {"positive", "color", "shape"} <= set(kinds)
    assert all(not pos[:, b].all() for b, k in enumerate(kinds) if k != "caption")
    # without facts (e.g. emoji captions): no facts rewrites, and only a sample's own caption is its positive
    plain = scene_batch(tokenizer, facts=False)
    texts, owners, kinds = cmcl_texts(plain, recipe, streams)
    assert kinds == ["caption"] * 6 and owners == [plain.keys[i] for i in streams["paired"] + streams["text"]]
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[range(4), range(4)] = True
    assert torch.equal(prepare_inputs(model, plain, recipe)["cmcl_pos"], expected)
    # the default model route uses no oracle, facts or not: no facts rewrites, no positive judged from the facts;
    # the model's own rewrites (test_unimo_rewrites_model.py) are further columns, negatives of every image
    _, default, _ = tiny_model()
    assert default.rewrites == "model"
    for data in (batch, plain):
        assert cmcl_texts(data, default, streams)[2] == ["caption"] * 6
        pos = prepare_inputs(model, data, default)["cmcl_pos"]
        assert pos.shape[1] > 6 and torch.equal(pos[:, :6], expected) and not pos[:, 6:].any()


GATHER_WORKER = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from test_unimo import scene_batch, tiny_model
from vlforge.components.models.unimo.family import prepare_inputs
from vlforge.components.tokenizer import load_tokenizer
rank, port, out = int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
_, recipe, model = tiny_model(rewrites="facts")
model.eval()
inp = prepare_inputs(model, scene_batch(load_tokenizer(sys.argv[5]), start=4 * rank), recipe)
cmcl = model(**inp)["cmcl"]
cmcl.backward()
torch.save({"cmcl": cmcl.detach(), "pos": inp["cmcl_pos"], "grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None}}, out)
dist.destroy_process_group()
"""


def test_two_workers_contrast_the_global_batch_as_one_process_would(tokenizer, tmp_path: Path) -> None:
    """CMCL with ``gather_features`` on 2 gloo workers (scenes 0-7 and 4-11) equals CMCL on their 16 samples in one
    process (the facts route): the same loss on every worker, the same positives (judged from the gathered facts:
    the scenes both workers hold make captions and rewrites of one worker true of the other's images), and the
    workers' mean gradient (what DDP applies) is the single process's gradient."""
    import socket
    import subprocess
    import sys

    tokenizer.save_pretrained(tmp_path / "tok")
    (tmp_path / "worker.py").write_text(GATHER_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(Path(__file__).parent), str(r), str(port),
                               str(tmp_path / f"rank{r}.pt"), str(tmp_path / "tok")], env=env) for r in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    _, recipe, model = tiny_model(rewrites="facts")
    model.eval()
    a, b = scene_batch(tokenizer), scene_batch(tokenizer, start=4)
    both = ImageTextBatch(torch.cat([a.pixel_values, b.pixel_values]), torch.cat([a.input_ids, b.input_ids]),
                          torch.cat([a.attention_mask, b.attention_mask]), a.captions + b.captions, a.keys + b.keys,
                          word_ids=torch.cat([a.word_ids, b.word_ids]), meta=a.meta + b.meta, step=a.step,
                          tokenizer=tokenizer, max_text_length=16)
    inp = prepare_inputs(model, both, recipe)
    cmcl = model(**inp)["cmcl"]
    cmcl.backward()
    n_images, n_texts = inp["cmcl_pos"].shape
    for r in ranks:
        assert r["pos"].shape == (n_images, n_texts) and int(r["pos"].sum()) == int(inp["cmcl_pos"].sum())
        assert torch.allclose(r["cmcl"], cmcl, atol=1e-5)
    # positives across workers exist (a caption of one worker true of another's image), so gathering facts matters
    _, local_recipe, _ = tiny_model(rewrites="facts", gather_features=False)
    local = sum(int(prepare_inputs(model, batch, local_recipe)["cmcl_pos"].sum()) for batch in (a, b))
    assert int(ranks[0]["pos"].sum()) > local
    for name, p in model.named_parameters():
        if p.grad is not None and p.grad.abs().sum() > 0:
            mean = (ranks[0]["grads"][name] + ranks[1]["grads"][name]) / 2
            assert torch.allclose(mean, p.grad, rtol=1e-3, atol=1e-6), name


def test_retrieval_encodings_are_normalised_and_generation_decodes(tokenizer) -> None:
    family, _, model = tiny_model()
    model.eval()
    batch = scene_batch(tokenizer, n=4)
    img = family.encode_images(model, batch.pixel_values)
    txt = family.encode_texts(model, batch.input_ids, batch.attention_mask)
    assert img.shape == txt.shape == (4, 128)
    assert torch.allclose(img.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(4), atol=1e-5)
    out = family.generate_texts(model, batch.pixel_values[:2], tokenizer, ["question: how many objects are there? answer:"] * 2, 3)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)


def test_preflight_needs_every_stream_on_every_worker(tokenizer) -> None:
    family = get_family("unimo")
    with pytest.raises(UserError, match="fewer than stream_pattern"):
        family.preflight(family.recipe("tiny", {"batch_size": 6, "num_workers": 2}), tokenizer)
    with pytest.raises(UserError, match="field 'stream_pattern'"):
        family.recipe("tiny", {"stream_pattern": "IT"})
    assert family.frozen_patterns(family.recipe("tiny", {"stream_pattern": "PT"})) == ["mim_head.*", "image_embeddings.mask_token"]


def test_load_refuses_another_family(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "vilt"}')
    with pytest.raises(UserError, match="not a UNIMO one"):
        get_family("unimo").load(tmp_path)
