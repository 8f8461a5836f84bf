"""The eval tasks on benchmark-layout datasets, through the reference-exact metrics package: retrieval with several
captions per image, zero-shot classification with the dataset's own class names and templates, a benchmark's own
split. Hand-computed cases plus a tiny CLIP on a small shapes dataset sharded with benchmark extras."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from eval_fixtures import make_dataset, one_torch_thread, shapes_dataset, tiny_clip_dir  # noqa: F401  (fixtures)
from vlforge.components.data.loader import read_split
from vlforge.components.evaluation.metrics import (
    classifier_weights,
    zeroshot_classification_metrics,
    zeroshot_logits,
    zeroshot_retrieval_metrics,
)
from vlforge.components.evaluation.retrieval import (
    retrieval_metrics,
    several_captions_result,
)
from vlforge.components.evaluation.runner import evaluate
from vlforge.components.evaluation.tasks import EvalContext, dataset_offers, run_task
from vlforge.components.models.registry import read_family_file
from vlforge.components.tokenizer import load_tokenizer

from vlforge.errors import UserError

# 3 images (unit axes) x 2 captions; each caption's score for an image is its coordinate
IMAGES = torch.eye(3)
TEXTS = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, 1.0],
                      [0.8, 0.0, 0.6]])
OWNER = [0, 0, 1, 1, 2, 2]


def test_several_captions_ranks_and_recall() -> None:
    r = several_captions_result(IMAGES, TEXTS, OWNER)
    # image 0 scores [0, 1, .6, 0, 0, .8]: its best caption c1 is first; image 1 [1, 0, .8, .6, 0, 0]: its best c2
    # has c0 above it; image 2 [0, 0, 0, .8, 1, .6]: c4 first
    assert r.image_rank == [0, 1, 0]
    # c0 -> image 1 above image 0; c1 first; c2 (.6, .8, 0) first; c3 (0, .6, .8): image 2 above 1; c4 first;
    # c5 (.8, 0, .6): image 0 above 2
    assert r.caption_rank == [1, 0, 0, 1, 0, 1]
    assert r.metrics["i2t_r1"] == pytest.approx(2 / 3) and r.metrics["t2i_r1"] == pytest.approx(3 / 6)
    assert r.metrics["i2t_r5"] == 1.0 and r.metrics["captions"] == 6.0
    assert r.metrics["i2t_chance_r1"] == pytest.approx(2 / 6) and r.metrics["t2i_chance_r1"] == pytest.approx(1 / 3)


def test_one_caption_per_image_gives_the_merged_protocols_numbers() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(20, 8, generator=gen), dim=-1)
    texts = torch.nn.functional.normalize(images + 0.8 * torch.randn(20, 8, generator=gen), dim=-1)
    several = several_captions_result(images, texts, list(range(20)))
    merged = retrieval_metrics(images, texts, list(range(20)))
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "i2t_chance_r1", "t2i_chance_r1"):
        assert several.metrics[key] == pytest.approx(merged.metrics[key]), key
    assert several.image_rank == merged.image_rank and several.caption_rank == merged.caption_rank


def two_captions(i: int, scene) -> dict:
    return {"captions": [scene.caption, f"a picture of {scene.label}"], "split": ("train", "validation", "test")[i % 3]}


def context(model_dir: Path, dataset: Path, split: str, manifest: dict | None = None) -> EvalContext:
    family, recipe = read_family_file(model_dir)
    return EvalContext(family, family.load(model_dir).eval(), recipe, load_tokenizer(model_dir),
                       read_split(dataset, split), manifest=manifest or {})


def test_retrieval_task_scores_every_caption(tiny_clip_dir: Path, make_dataset) -> None:
    dataset = make_dataset("captioned", 18, extra=two_captions)
    ctx = context(tiny_clip_dir, dataset, "test")
    assert len(ctx.samples) == 6 and all(len(s.meta["captions"]) == 2 for s in ctx.samples)
    out = run_task("retrieval", ctx)
    texts = [c for s in ctx.samples for c in s.meta["captions"]]
    expected = zeroshot_retrieval_metrics(ctx.image_embeddings(), ctx.embed_texts(texts), [i for i in range(6) for _ in "ab"])
    assert {k: out.metrics[k] for k in expected} == pytest.approx(expected)
    assert out.metrics["captions"] == 12.0 and out.rows["captions"][0] == ctx.samples[0].meta["captions"]


def test_zero_shot_uses_the_datasets_classes_and_templates(tiny_clip_dir: Path, shapes_dataset: Path) -> None:
    labels = sorted({s.meta["label"] for s in read_split(shapes_dataset, "all")})
    templates = ["a {} shape", "the {}"]
    ctx = context(tiny_clip_dir, shapes_dataset, "validation", {"source": {"classnames": labels[::-1], "templates": templates}})
    out = run_task("zero_shot_classification", ctx)
    classes = labels[::-1]
    emb = ctx.embed_texts([t.format(c) for c in classes for t in templates]).view(len(classes), len(templates), -1)
    logits = zeroshot_logits(ctx.image_embeddings(), classifier_weights(emb))
    expected = zeroshot_classification_metrics(logits, [classes.index(s.meta["label"]) for s in ctx.samples])
    assert {k: out.metrics[k] for k in expected} == pytest.approx(expected)
    assert out.metrics["zs_top1"] == out.metrics["acc1"] and out.metrics["zs_classes"] == len(classes)
    assert out.rows["prediction"] == [classes[k] for k in logits.argmax(dim=1).tolist()]


def test_a_benchmarks_test_split_is_evaluated(tiny_clip_dir: Path, make_dataset, tmp_path: Path) -> None:
    dataset = make_dataset("captioned", 18, extra=two_captions)
    assert {"captions", "labels", "train_labels"} <= dataset_offers(dataset, "test")
    metrics = evaluate(tiny_clip_dir, dataset, "test", ["retrieval", "linear_probe"], tmp_path / "report", baseline=False)
    assert metrics["captions"] == 12.0 and metrics["images"] == 6.0 and "probe_top1" in metrics


def test_vqav2_metrics_hand_computed() -> None:
    from vlforge.components.evaluation.vqav2 import VQAv2Question, vqav2_metrics

    three_of_ten = VQAv2Question("k", 1, "what colour?", ("red",) * 3 + ("blue",) * 7, "other", "blue")
    yes = VQAv2Question("k", 2, "is it red?", ("yes",) * 10, "yes/no", "yes")
    metrics, scores = vqav2_metrics([three_of_ten, yes], ["Red.", "yes"])  # "Red." normalises to "red"
    assert scores == [pytest.approx(0.9), 1.0]
    assert metrics["vqa_accuracy"] == pytest.approx(0.95) and metrics["vqa_acc_other"] == pytest.approx(0.9)
    assert metrics["vqa_acc_yesno"] == 1.0 and "vqa_acc_number" not in metrics


def vqa_extra(i: int, scene) -> dict:
    answer = scene.label
    return {"vqa": [{"question_id": i, "question": "what is the main shape?", "answers": [answer] * 4 + ["circle"] * 6,
                     "answer_type": "other", "multiple_choice_answer": answer}]}


def test_vqav2_task_by_scoring(tiny_clip_dir: Path, make_dataset) -> None:
    from vlforge.components.evaluation.metrics import vqa_accuracy
    from vlforge.components.evaluation.vqav2 import candidate_answers, questions_for

    dataset = make_dataset("vqa", 12, with_facts=False, extra=vqa_extra)
    assert "vqav2" in dataset_offers(dataset, "all") and "facts" not in dataset_offers(dataset, "all")
    ctx = context(tiny_clip_dir, dataset, "all")
    out = run_task("vqav2", ctx)
    assert set(out.rows["mode"]) == {"scoring"} and out.metrics["vqa_questions"] == 12
    assert set(out.rows["prediction"]) <= set(candidate_answers(questions_for(ctx)))
    expected = [vqa_accuracy(p, a) for p, a in zip(out.rows["prediction"], out.rows["answers"])]
    assert out.rows["accuracy"] == expected and out.metrics["vqa_accuracy"] == pytest.approx(sum(expected) / 12)


def test_nlu_probe_on_a_glue_task_reports_its_metric(tiny_clip_dir: Path, tmp_path: Path) -> None:
    from vlforge.components.data.shard import write_text_dataset
    from vlforge.components.evaluation.metrics import glue_metrics
    from vlforge.components.sources.glue import load_glue

    folder = tmp_path / "MRPC"
    folder.mkdir()
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    pairs = [("a red circle", "a red circle"), ("a blue square", "a green star"), ("two circles", "two circles"),
             ("one star", "three squares")]
    body = [f"{int(a == b)}\t{i}\t{i}\t{a}\t{b}" for i, (a, b) in enumerate(pairs * 3)]
    (folder / "train.tsv").write_text(header + "\n".join(body[:8]) + "\n")
    (folder / "dev.tsv").write_text(header + "\n".join(body[8:]) + "\n")
    table, description, _ = load_glue(folder)
    dataset = tmp_path / "glue-ds"
    write_text_dataset(table, dataset, description)
    offers = dataset_offers(dataset, "validation")
    assert {"text_only", "labels", "train_labels"} <= offers
    metrics = evaluate(tiny_clip_dir, dataset, "validation", ["nlu_probe"], tmp_path / "report", baseline=False)
    assert metrics["nlu_train_samples"] == 8 and metrics["glue_accuracy"] == metrics["nlu_accuracy"]
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "report" / "per_sample" / "nlu_probe.parquet").to_pylist()
    expected = glue_metrics("mrpc", [int(r["prediction"]) for r in rows], [int(r["label"]) for r in rows])
    assert metrics["glue_f1"] == pytest.approx(expected["f1"])
    with pytest.raises(UserError, match="'glue-ds' is text-only \\(no images\\), and task 'retrieval' needs images"):
        evaluate(tiny_clip_dir, dataset, "validation", ["retrieval"], tmp_path / "r2", baseline=False)


def test_nlvr2_metrics_hand_computed() -> None:
    from vlforge.components.evaluation.nlvr2 import nlvr2_metrics

    # sentence dev-1-*-0 is written for pairs 0 and 1, sentence dev-1-*-1 for pair 0 only
    ids = ["dev-1-0-0", "dev-1-1-0", "dev-1-0-1"]
    m = nlvr2_metrics(ids, [True, False, True], [True, True, True])
    assert m["nlvr2_accuracy"] == pytest.approx(2 / 3)
    assert m["nlvr2_consistency"] == pytest.approx(1 / 2)  # sentence 0 wrong on pair 1; sentence 1 right
    assert m["nlvr2_true_fraction"] == pytest.approx(2 / 3) and m["nlvr2_majority"] == pytest.approx(2 / 3)


def nlvr2_extra(i: int, scene) -> dict:
    pair = f"dev-1-{i // 2}"
    if i % 2:
        return {"nlvr2_pair": pair, "nlvr2_side": "right"}
    statements = [{"identifier": f"{pair}-0", "sentence": scene.caption, "label": True, "right": f"shapes-0-{i + 1:06d}"},
                  {"identifier": f"{pair}-1", "sentence": "nothing at all", "label": False, "right": f"shapes-0-{i + 1:06d}"}]
    return {"nlvr2_pair": pair, "nlvr2_side": "left", "nlvr2": statements}


def test_nlvr2_task_by_scoring(tiny_clip_dir: Path, make_dataset) -> None:
    dataset = make_dataset("nlvr2", 8, with_facts=False, extra=nlvr2_extra)
    assert "nlvr2" in dataset_offers(dataset, "all")
    ctx = context(tiny_clip_dir, dataset, "all")
    out = run_task("nlvr2", ctx)
    assert out.metrics["nlvr2_statements"] == 8 and out.metrics["nlvr2_true_fraction"] == 0.5
    left = {s.key: s for s in ctx.samples}[out.rows["left_key"][0]]
    right = {s.key: s for s in ctx.samples}[out.rows["right_key"][0]]
    assert right.meta["source_key"] == left.meta["nlvr2"][0]["right"]
    pair_scores = ctx.score_sample_texts([(ctx.samples.index(left), out.rows["statement"][0]),
                                          (ctx.samples.index(right), out.rows["statement"][0])])
    assert out.rows["score"][0] == pytest.approx(float(pair_scores.mean()))
    assert sum(out.rows["prediction"]) == 4  # true above the median: half of 8 distinct scores


def test_eval_stage_takes_a_benchmarks_own_split(tiny_clip_dir: Path, make_dataset, home: Path) -> None:
    from vlforge.catalog import Catalog
    from vlforge.components.stages import eval_plan

    catalog = Catalog(home / "catalog")
    catalog.register(kind="dataset", name="bench", files=make_dataset("captioned", 9, extra=two_captions), config={})
    catalog.register(kind="model", name="clip-tiny", family="clip", files=tiny_clip_dir, config={})
    key, _, _ = eval_plan("clip-tiny", "bench", ["retrieval"], "test", catalog)
    assert key != eval_plan("clip-tiny", "bench", ["retrieval"], "validation", catalog)[0]
    with pytest.raises(UserError, match="--split 'dev' is not one of train, validation, test, all"):
        eval_plan("clip-tiny", "bench", ["retrieval"], "dev", catalog)
