"""UniT specifics (the shared battery covers learning a fixed batch, save/load and recipe validation): the paper-size
parameter count, the task sampler (proportional, deterministic, never a task the batch lacks data for), the VQA
answer vocabulary, ITM negatives, each task's head learning alone, and ITM scoring."""
from pathlib import Path

import pytest
import torch
from conftest import SPECIALS, scene_texts, wordpiece
from vlforge.components.models.registry import ImageTextBatch, get_family
from vlforge.components.models.unit.tasks import (
    ANSWER_INDEX,
    TASKS,
    VQA_ANSWERS,
    draw_task,
    itm_inputs,
    supported_tasks,
    task_inputs,
    text_cls_inputs,
    vqa_inputs,
)
from vlforge.components.sources.scene_tasks import vqa_questions
from vlforge.components.sources.shapes import SHAPES, make_scene, sample_key
from vlforge.components.training.multitask import sample_task, task_counts

from vlforge.errors import UserError

# a smaller tiny model, so each head's learning check takes seconds
SMALL = {"image_size": 32, "max_text_length": 16, "backbone_embedding_size": 16, "backbone_hidden_sizes": [16, 32, 64],
         "encoder_hidden_size": 64, "encoder_layers": 1, "encoder_ffn_dim": 128, "text_hidden_size": 64, "text_layers": 1,
         "text_intermediate_size": 128, "decoder_hidden_size": 64, "decoder_layers": 1, "decoder_ffn_dim": 128,
         "num_queries": 2, "dropout": 0.0}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    return wordpiece(tmp_path_factory, scene_texts(100))


def scene_batch(tokenizer, n: int = 8, facts: bool = True, labels: bool = True, keys: list[str] | None = None) -> ImageTextBatch:
    scenes = [make_scene(0, i) for i in range(n)]
    captions = [s.caption for s in scenes]
    enc = tokenizer(captions, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    pixels = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    meta = [{**({"facts": s.facts()} if facts else {}), **({"label": s.label} if labels else {})} for s in scenes]
    return ImageTextBatch(pixels, enc["input_ids"], enc["attention_mask"], captions, keys or [sample_key(0, i) for i in range(n)],
                          meta=meta, tokenizer=tokenizer, max_text_length=16)


def test_paper_size_parameter_count() -> None:
    # Hu & Singh 2021 (arXiv 2102.10772) give 201M parameters for UniT with the shared decoder on 8 datasets (quoted
    # from the paper from memory; the paper's text was not at hand). That model is MMF's
    # projects/unit/configs/all_8_datasets/shared_dec.yaml, and counting mmf/models/unit/ gives 201,507,900 for it, made of the shared body this family builds (ResNet-50 with DETR's frozen BatchNorm,
    # whose 53,120 affine weights are buffers there and parameters here; input_proj; 6-layer DETR encoder at 256;
    # BERT-base; the 768-wide projections; the 6-layer shared decoder at 768) plus task-specific parts this family
    # replaces with its own: the detection heads (COCO and VG class layers, two box MLPs, the VG attribute head),
    # the VQAv2 / SNLI-VE / four GLUE classifiers, 100 + 100 + 6 x 25 queries, two 256-row task-embedding tables,
    # and BERT's pooler (which UniT never reads, so it is left out here).
    mmf_task_specific = (
        768 * 92 + 92 + 768 * 1602 + 1602  # COCO / VG class layers
        + 2 * (2 * (768 * 768 + 768) + 768 * 4 + 4)  # two 3-layer box MLPs
        + 1602 * 256 + (768 + 256) * 512 + 512 + 512 * 401 + 401  # VG attribute head
        + 6 * (768 * 768 + 768 + 2 * 768)  # six BertPredictionHeadTransforms
        + 768 * (3129 + 3 + 2 + 3 + 2 + 2) + (3129 + 3 + 2 + 3 + 2 + 2)  # VQAv2, SNLI-VE, QNLI, MNLI, SST-2, QQP
        + (100 + 100 + 6 * 25) * 768  # queries
        + 256 * 256 + 256 * 768  # task-embedding tables of the image and text encoders
        + 768 * 768 + 768  # BERT pooler
    )
    paper_body = 201_000_000 - mmf_task_specific + 53_120
    family = get_family("unit")
    with torch.device("meta"):
        model = family.build_model(family.recipe("base"), 49408, SPECIALS)
    ours_task_specific = sum(
        p.numel() for n, p in model.named_parameters()
        if n.startswith(("heads.", "query_embeds.", "image_task_embeddings.", "text_task_embeddings."))
    )
    body = sum(p.numel() for p in model.parameters()) - ours_task_specific
    assert abs(body - paper_body) / paper_body < 0.01, (body, paper_body)
    assert model.text_encoder.config.vocab_size == 30522  # the recipe's BERT vocabulary, not the tokenizer's size


def test_sampler_draws_in_proportion_and_identically_on_every_call() -> None:
    weights = {"vqa": 0.5, "itm": 0.3, "text_cls": 0.2}
    counts = task_counts(weights, seed=0, steps=4000)
    for task, w in weights.items():
        assert abs(counts[task] / 4000 - w) < 0.03, counts
    # a pure function of (seed, step, weights): what every data-parallel rank (and a resumed run) draws
    reordered = {"text_cls": 0.2, "vqa": 0.5, "itm": 0.3}
    assert [sample_task(weights, 7, s) for s in range(200)] == [sample_task(reordered, 7, s) for s in range(200)]
    assert [sample_task(weights, 7, s) for s in range(200)] != [sample_task(weights, 8, s) for s in range(200)]
    assert task_counts({"vqa": 1.0, "itm": 0.0, "text_cls": 1.0}, 0, 500)["itm"] == 0


def test_tasks_a_batch_lacks_data_for_are_never_drawn(tokenizer) -> None:
    weights = {t: 1.0 for t in TASKS}
    full = scene_batch(tokenizer)
    assert supported_tasks(full, SHAPES) == list(TASKS)
    cases = {
        ("vqa", "detection"): scene_batch(tokenizer, facts=False),  # no scene facts: no questions, no boxes
        ("text_cls",): scene_batch(tokenizer, labels=False),  # no labels
        ("itm",): scene_batch(tokenizer, keys=["same"] * 8),  # one sample repeated: no negative exists
    }
    for missing, batch in cases.items():
        assert not set(missing) & set(supported_tasks(batch, SHAPES))
        drawn = set()
        for step in range(300):
            batch.step = step
            drawn.add(draw_task(weights, batch, SHAPES, seed=0))
        assert drawn == set(TASKS) - set(missing), (missing, drawn)
    # labels outside the recipe's classes do not count; a batch that supports no weighted task is a one-line error
    assert "text_cls" not in supported_tasks(full, ["cat", "dog"])
    family = get_family("unit")
    recipe = family.recipe("tiny", {**SMALL, "task_weights": {"vqa": 1.0}})
    model = family.build_model(recipe, len(tokenizer), SPECIALS)
    with pytest.raises(UserError, match="supports none of the weighted tasks"):
        family.training_step(model, cases[("vqa", "detection")], recipe)


def test_vqa_targets_come_from_the_scene_questions(tokenizer) -> None:
    for i in range(300):  # every answer the scene questions can give is in the fixed vocabulary
        for q in vqa_questions(sample_key(0, i), make_scene(0, i).facts()):
            assert q.answer in ANSWER_INDEX
    assert len(VQA_ANSWERS) == 23
    batch = scene_batch(tokenizer)
    inputs = vqa_inputs(batch)
    expected = [(row, q) for row, k in enumerate(batch.keys) for q in vqa_questions(k, batch.facts()[row])]
    assert inputs.image_index.tolist() == [row for row, _ in expected]
    assert [VQA_ANSWERS[a] for a in inputs.labels.tolist()] == [q.answer for _, q in expected]
    decoded = tokenizer.batch_decode(inputs.input_ids, skip_special_tokens=True)
    assert decoded[0].replace(" ", "") == expected[0][1].question.replace(" ", "")


def test_itm_negatives_are_real_mismatches(tokenizer) -> None:
    keys = ["a", "b", "a", "c", "d", "b", "e", "f"]  # rows 0/2 and 1/5 are the same sample
    batch = scene_batch(tokenizer, keys=keys)
    negatives = 0
    for seed in range(20):
        inputs = itm_inputs(batch, torch.Generator().manual_seed(seed))
        img, txt, lab = inputs.image_index.tolist(), inputs.text_index.tolist(), inputs.labels.tolist()
        for i, t, y in zip(img, txt, lab):
            if y == 1:
                assert i == t
            else:
                assert keys[i] != keys[t]  # another sample's image, never the same sample under another row
                negatives += 1
        assert lab.count(1) == 8
    assert negatives == 20 * 8


def test_text_task_uses_only_known_labels(tokenizer) -> None:
    batch = scene_batch(tokenizer)
    batch.meta[3]["label"] = "not-a-class"
    inputs = text_cls_inputs(batch, SHAPES)
    assert inputs.input_ids.shape[0] == 7 and inputs.pixel_values is None
    assert [SHAPES[c] for c in inputs.labels.tolist()] == [m["label"] for j, m in enumerate(batch.meta) if j != 3]


@pytest.mark.parametrize("task", TASKS)
def test_each_task_head_learns_alone(task: str, tokenizer) -> None:
    torch.manual_seed(0)
    family = get_family("unit")
    recipe = family.recipe("tiny", {**SMALL, "task_weights": {task: 1.0}})
    model = family.build_model(recipe, len(tokenizer), SPECIALS)
    batch = scene_batch(tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):  # batch.step stays 0: the same ITM negatives every step
        out = family.training_step(model, batch, recipe)
        assert float(out["task_index"]) == TASKS.index(task) and f"loss_{task}" in out
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], (task, losses)
    # the other tasks' heads are not in this task's graph but still get a gradient, zero (the DDP touch term)
    for name, p in model.named_parameters():
        if name.startswith("heads.") and not name.startswith(f"heads.{task}."):
            assert p.grad is not None and not p.grad.any(), name


def test_score_pairs_and_eval_losses_are_pure(tokenizer, tmp_path: Path) -> None:
    torch.manual_seed(0)
    family = get_family("unit")
    assert "itm" in family.capabilities
    recipe = family.recipe("tiny", SMALL)
    model = family.build_model(recipe, len(tokenizer), SPECIALS).eval()
    batch = scene_batch(tokenizer)
    with torch.no_grad():
        scores = family.score_pairs(model, batch.pixel_values, batch.input_ids, batch.attention_mask)
        assert scores.shape == (8,) and torch.isfinite(scores).all()
        for step in range(3):
            batch.step = step
            assert torch.equal(family.training_step(model, batch, recipe)["loss"], family.training_step(model, batch, recipe)["loss"])
        direct = model.task_logits("itm", batch.pixel_values, None, batch.input_ids, batch.attention_mask)
        assert torch.allclose(scores, direct[:, 1] - direct[:, 0])
        # an ITM input row pairs text i with image image_index[i]: the same scores as scoring those pairs directly
        inputs = task_inputs("itm", batch, SHAPES, torch.Generator().manual_seed(0))
        via_index = model.task_logits("itm", batch.pixel_values, inputs.image_index, batch.input_ids, batch.attention_mask,
                                      inputs.text_index)
        pixels = batch.pixel_values[inputs.image_index]
        ids, mask = batch.input_ids[inputs.text_index], batch.attention_mask[inputs.text_index]
        assert torch.allclose(via_index, model.task_logits("itm", pixels, None, ids, mask), atol=1e-5)


def test_answer_questions_gives_the_trained_vqa_heads_answers(tokenizer) -> None:
    """The eval's ``vqa_answer`` capability reads the VQA head the family trains: after the head fits a fixed
    batch, asking the same questions (tokenised to the longest, not the training length) gives the training answers."""
    torch.manual_seed(0)
    family = get_family("unit")
    assert "vqa_answer" in family.capabilities
    recipe = family.recipe("tiny", {**SMALL, "task_weights": {"vqa": 1.0}})
    model = family.build_model(recipe, len(tokenizer), SPECIALS)
    batch = scene_batch(tokenizer)
    inputs = vqa_inputs(batch)
    questions = [q for key, m in zip(batch.keys, batch.meta) for q in vqa_questions(key, m["facts"])]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(60):
        loss = family.training_step(model, batch, recipe)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    answers = family.answer_questions(model, batch.pixel_values[inputs.image_index], [q.question for q in questions], tokenizer)
    assert len(answers) == len(questions) and set(answers) <= set(VQA_ANSWERS)
    right = sum(a == q.answer for a, q in zip(answers, questions)) / len(questions)
    majority = max(sum(q.answer == a for q in questions) for a in VQA_ANSWERS) / len(questions)
    assert right > max(0.8, majority), (right, majority)


def test_detection_targets_are_the_scene_boxes_and_old_checkpoints_say_they_cannot_detect(tokenizer, tmp_path: Path) -> None:
    from vlforge.components.models.unit.modeling import UnitConfig, UnitModel
    from vlforge.components.models.unit.tasks import DETECTION_CLASSES, detection_inputs

    batch = scene_batch(tokenizer)
    inputs = detection_inputs(batch)
    assert inputs.input_ids is None and inputs.pixel_values.shape[0] == 8
    for target, facts in zip(inputs.labels, batch.facts()):
        objects = facts["objects"]
        assert [DETECTION_CLASSES[c] for c in target["class_labels"].tolist()] == [o["shape"] for o in objects]
        for (cx, cy, w, h), o in zip(target["boxes"].tolist(), objects):
            x0, y0, x1, y1 = o["bbox"]
            assert (cx, cy, w, h) == pytest.approx(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), abs=1e-6)
    family = get_family("unit")
    recipe = family.recipe("tiny", {**SMALL, "detection_queries": 5})
    model = family.build_model(recipe, len(tokenizer), SPECIALS).eval()
    found = family.detect_objects(model, batch.pixel_values)
    assert len(found) == 8 and found[0]["boxes"].shape == (5, 4) and set(found[0]["labels"]) <= set(DETECTION_CLASSES)
    assert ((found[0]["boxes"][:, 2:] >= found[0]["boxes"][:, :2]).all())
    # a UniT saved before detection existed: its config has three tasks and no detection head
    old = UnitModel(UnitConfig(task_names=["vqa", "itm", "text_cls"], task_num_labels=[23, 2, 6], **{
        k: v for k, v in model.config.to_dict().items() if k.startswith(("backbone_", "encoder_", "text_", "decoder_"))}))
    old.save_pretrained(tmp_path / "old")
    reloaded = UnitModel.from_pretrained(tmp_path / "old")
    assert "detection" not in reloaded.heads
    with pytest.raises(UserError, match="no detection head"):
        family.detect_objects(reloaded, batch.pixel_values)
