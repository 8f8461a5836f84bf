"""The NLU probe (visual extensions analysis) and few-shot VQA: what they feed the model, that the evaluated
checkpoint is never changed, that fine-tuning the text side beats chance on a label the caption states, and STS-B
as GLUE's regression (one output, MSE, Pearson/Spearman as SciPy computes them)."""
import json
import math
from pathlib import Path

import pytest
import torch
from eval_fixtures import clip_context, one_torch_thread, shapes_dataset, tiny_clip_dir  # noqa: F401  (fixtures)
from vlforge.components.data.loader import read_split
from vlforge.components.data.shard import write_text_dataset
from vlforge.components.evaluation import nlu_probe
from vlforge.components.evaluation.headline import headline_metrics
from vlforge.components.evaluation.nlu_probe import glue_task_metrics
from vlforge.components.evaluation.runner import evaluate
from vlforge.components.sources.glue import load_glue
from vlforge.components.sources.shapes import COLORS, SHAPES
from vlforge.components.evaluation.tasks import run_task
from vlforge.components.evaluation.vqa import FEW_SHOT_K, few_shot_items, run_vqa_few_shot


def test_nlu_probe_fine_tunes_a_copy_and_learns_the_label_from_text(tiny_clip_dir: Path, shapes_dataset: Path) -> None:
    ctx = clip_context(tiny_clip_dir, shapes_dataset)
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    out = run_task("nlu_probe", ctx)
    assert all(torch.equal(before[k], v) for k, v in ctx.model.state_dict().items())  # the checkpoint is untouched
    m = out.metrics
    assert m["nlu_train_samples"] == len([s for s in read_split(shapes_dataset, "train") if s.meta.get("label")])
    assert len(out.rows["prediction"]) == len(ctx.samples)
    assert m["nlu_accuracy"] > m["nlu_chance"], m
    again = run_task("nlu_probe", clip_context(tiny_clip_dir, shapes_dataset))
    assert again.metrics == m  # seeded: the same probe twice gives the same numbers


def test_stsb_metrics_match_scipy_and_glue_score_is_their_mean() -> None:
    stats = pytest.importorskip("scipy.stats")
    pred = [0.1, 2.0, 2.0, 3.7, 4.9, 1.2]  # a tie in the predictions and one in the labels
    gold = ["0.000", "1.800", "2.600", "2.600", "5.000", "0.400"]
    m = glue_task_metrics("stsb", pred, gold)
    y = [float(g) for g in gold]
    assert m["glue_pearson"] == pytest.approx(stats.pearsonr(pred, y).statistic, abs=1e-6)
    assert m["glue_spearmanr"] == pytest.approx(stats.spearmanr(pred, y).statistic, abs=1e-6)
    assert m["glue_score"] == pytest.approx((m["glue_pearson"] + m["glue_spearmanr"]) / 2)
    # a classification task's glue_score is the mean of its metrics too: MRPC accuracy 3/4, F1 2*1/(2+1) = 2/3
    mrpc = glue_task_metrics("mrpc", ["1", "0", "0", "0"], ["1", "1", "0", "0"])
    assert mrpc["glue_score"] == pytest.approx((0.75 + 2 / 3) / 2)


def _stsb_dataset(tmp_path: Path) -> Path:
    """An STS-B-layout task in the shapes captions' words, ingested as a text dataset: a score a linear head on the
    text can learn, 4.5 for a warm first colour, 0.5 for a cool one, 2.5 otherwise, plus 0.1 per shape index."""
    warm, cool = {"red", "orange", "yellow"}, {"blue", "cyan", "purple"}
    folder = tmp_path / "STS-B"
    folder.mkdir()
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    body = []
    for i, (colour, (k, shape)) in enumerate((c, s) for c in COLORS for s in enumerate(SHAPES)):
        score = (4.5 if colour in warm else 0.5 if colour in cool else 2.5) + 0.1 * k
        body.append(f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\ta {colour} {shape}\t"
                    f"a small {shape}\t{score:.3f}")
    (folder / "train.tsv").write_text(header + "\n".join(b for i, b in enumerate(body) if i % 4) + "\n")
    (folder / "dev.tsv").write_text(header + "\n".join(b for i, b in enumerate(body) if not i % 4) + "\n")
    table, description, _ = load_glue(folder)
    dataset = tmp_path / "stsb-ds"
    write_text_dataset(table, dataset, description)
    return dataset


def test_nlu_probe_regresses_stsb_scores(tiny_clip_dir: Path, tmp_path: Path, monkeypatch) -> None:
    stats = pytest.importorskip("scipy.stats")
    dataset = _stsb_dataset(tmp_path)

    def context():
        ctx = clip_context(tiny_clip_dir, dataset)
        ctx.manifest = json.loads((dataset / "manifest.json").read_text())
        return ctx

    monkeypatch.setattr(nlu_probe, "EPOCHS", 40)  # 36 training pairs (2 steps a pass) where STS-B has 5,749
    ctx = context()
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    out = run_task("nlu_probe", ctx)
    assert all(torch.equal(before[k], v) for k, v in ctx.model.state_dict().items())  # the checkpoint is untouched
    m = out.metrics
    assert m["nlu_train_samples"] == 36 and "nlu_accuracy" not in m
    truth, pred = out.rows["label"], out.rows["prediction"]
    assert len(truth) == len(ctx.samples) == 12 and truth[0] == 4.5  # red circle: the score as a number
    assert m["glue_pearson"] == pytest.approx(stats.pearsonr(pred, truth).statistic, abs=1e-5)
    assert m["glue_spearmanr"] == pytest.approx(stats.spearmanr(pred, truth).statistic, abs=1e-5)
    assert m["nlu_mse"] == pytest.approx(sum((p - t) ** 2 for p, t in zip(pred, truth)) / 12)
    mean = sum(truth) / 12
    assert m["glue_pearson"] > 0.8 and m["nlu_mse"] < sum((t - mean) ** 2 for t in truth) / 12, m  # it learned
    assert headline_metrics(m, ["nlu_probe"]) == [("glue_score", m["glue_score"])]
    assert not math.isnan(m["glue_score"])
    assert run_task("nlu_probe", context()).metrics == m  # seeded
    flat = evaluate(tiny_clip_dir, dataset, "validation", ["nlu_probe"], tmp_path / "report", baseline=False)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert flat == m and report["tasks"]["nlu_probe"]["headline"] == "glue_score"


class _Recorder:
    """A stand-in model interface that records what few-shot VQA sends and answers with the last shot's answer."""

    image_mean = (0.5, 0.5, 0.5)
    image_std = (0.25, 0.25, 0.25)

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []

    def image_transform(self, recipe):
        from vlforge.components.data.loader import ImageTransform

        return ImageTransform(recipe.image_size, self.image_mean, self.image_std)

    def few_shot_generate(self, model, shots, query_pixels, query_prompt, tokenizer, max_new_tokens):
        self.calls.append((len(shots), query_prompt))
        assert all(p.shape == query_pixels.shape for p, _ in shots)
        return shots[-1][1].split("answer: ", 1)[1] if shots else "yes"


def test_few_shot_vqa_shots_are_solved_examples_of_other_scenes(tiny_clip_dir: Path, shapes_dataset: Path) -> None:
    ctx = clip_context(tiny_clip_dir, shapes_dataset, "all")
    items = few_shot_items(ctx)
    assert items
    for i, q, shots in items:
        assert len(shots) == FEW_SHOT_K
        assert all(j != i and s.qtype == q.qtype for j, s in shots)
    recorder = _Recorder()
    ctx.family = recorder  # type: ignore[assignment]
    out = run_vqa_few_shot(ctx)
    assert sorted({k for k, _ in recorder.calls}) == [0, FEW_SHOT_K]
    assert all(p.endswith("answer:") for _, p in recorder.calls)
    copied = sum(q.answer == shots[-1][1].answer.split()[0] for _, q, shots in items) / len(items)
    assert abs(out.metrics["vqa_few_shot_accuracy"] - copied) < 1e-9
    assert "vqa_zero_shot_accuracy" in out.metrics and out.metrics["vqa_format_seen_in_training"] == 0.0

    ctx.seen_formats = frozenset({"vqa"})  # the model, or the LM it keeps frozen, trained on "question: q answer: a"
    seen = run_vqa_few_shot(ctx).metrics
    assert "vqa_zero_shot_accuracy" not in seen and seen["vqa_format_seen_in_training"] == 1.0
    assert seen["vqa_no_shot_accuracy"] == out.metrics["vqa_zero_shot_accuracy"]


def test_seen_formats_follow_the_recipe_and_the_models_it_keeps(tmp_path: Path) -> None:
    """A text-lm trained on reading comprehension saw the VQA form; a Frozen on it has seen it through its LM even
    with vqa_prob 0; the supervised recipes say so themselves; CLIP never does."""
    from vlforge.components.models.registry import FAMILY_FILE, get_family, model_seen_formats

    text_lm, frozen, vlkd = get_family("text-lm"), get_family("frozen"), get_family("vlkd")
    lm_dir = tmp_path / "lm"
    lm_dir.mkdir()
    text_lm.write_family_file(lm_dir, text_lm.recipe("tiny"))
    assert model_seen_formats(lm_dir) == {"vqa"}
    assert frozen.seen_formats(frozen.recipe("tiny", {"language_model": str(lm_dir)})) == {"vqa"}
    text_lm.write_family_file(lm_dir, text_lm.recipe("tiny", {"context_qa_prob": 0.0}))
    assert frozen.seen_formats(frozen.recipe("tiny", {"language_model": str(lm_dir)})) == frozenset()
    assert frozen.task_formats(frozen.recipe("tiny-vqa-supervised")) == {"vqa"}
    assert vlkd.task_formats(vlkd.recipe("tiny")) == vlkd.task_formats(vlkd.recipe("base")) == frozenset()
    assert vlkd.task_formats(vlkd.recipe("tiny-vqa-supervised")) == {"vqa"}
    assert get_family("clip").seen_formats(get_family("clip").recipe("tiny")) == frozenset()
    # a checkpoint saved before formats were recorded: its own recipe decides
    meta = json.loads((lm_dir / FAMILY_FILE).read_text())
    del meta["task_formats"]
    meta["recipe"]["context_qa_prob"] = 0.5
    (lm_dir / FAMILY_FILE).write_text(json.dumps(meta))
    assert model_seen_formats(lm_dir) == {"vqa"}
