"""The runner on a tiny CLIP checkpoint and a small shapes dataset: every task of the default suite that fits, the
report folder's files, per-sample rows, and the untrained baseline beside every metric. Plus the metric helpers of
the scene tasks and the linear probe on hand-made cases."""
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from eval_fixtures import make_dataset, one_torch_thread, shapes_dataset, tiny_clip_dir  # noqa: F401  (fixtures)
from vlforge.components.data.loader import read_split
from vlforge.components.evaluation.itm import itm_metrics, negative_captions
from vlforge.components.evaluation.linear_probe import (
    choose_l2,
    fit_logistic_regression,
    predict,
)
from vlforge.components.evaluation.nlvr import nlvr_metrics
from vlforge.components.evaluation.runner import evaluate
from vlforge.components.evaluation.tasks import (
    TASKS,
    dataset_offers,
    family_offers,
    suite_tasks,
)
from vlforge.components.evaluation.vqa import vqa_metrics
from vlforge.components.models.registry import (
    family_names,
    get_family,
    special_token_ids,
)
from vlforge.components.sources.scene_tasks import (
    VQAQuestion,
    grounding_phrases,
    vqa_questions,
)
from vlforge.components.tokenizer import (
    TokenizerConfig,
    load_tokenizer,
    train_tokenizer,
)

from vlforge.errors import UserError

SUITE = ["grounding", "linear_probe", "nlvr", "retrieval", "vqa", "zero_shot_classification"]


def test_suite_on_tiny_clip(tiny_clip_dir: Path, shapes_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    metrics = evaluate(tiny_clip_dir, shapes_dataset, "validation", SUITE, out)
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["tasks"]) == SUITE and report["family"] == "clip"
    for task in SUITE:
        headline = TASKS[task].headline
        assert 0.0 <= metrics[headline] <= 1.0 and f"baseline_{headline}" in metrics
        assert report["tasks"][task]["metrics"][headline] == metrics[headline]
    assert {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"} <= set(metrics)
    samples = read_split(shapes_dataset, "validation")
    n = len(samples)
    assert pq.read_table(out / "per_sample" / "retrieval.parquet").num_rows == n
    vqa_rows = pq.read_table(out / "per_sample" / "vqa.parquet").to_pylist()
    assert len(vqa_rows) == metrics["vqa_questions"] == sum(len(vqa_questions(s.key, s.meta["facts"])) for s in samples)
    assert all(r["correct"] == (r["prediction"] == r["answer"]) for r in vqa_rows)
    assert metrics["nlvr_statements"] == 3 * (n // 2)
    phrases = [g for s in samples for g in grounding_phrases(s.key, s.meta["facts"])]
    assert metrics["grounding_chance"] == pytest.approx(sum(1 / len(g.boxes) for g in phrases) / len(phrases))
    assert metrics["i2t_chance_r1"] == pytest.approx(1 / metrics["unique_captions"])
    for png in ("retrieval.png", "retrieval_examples.png", "zero_shot_confusion.png", "linear_probe_confusion.png",
                "vqa_by_type.png"):
        assert (out / png).stat().st_size > 1000, png


def test_runner_refuses_a_task_that_does_not_fit(tiny_clip_dir: Path, make_dataset, tmp_path: Path) -> None:
    plain = make_dataset("plain", 8, with_facts=False)
    with pytest.raises(UserError, match="dataset 'plain' lacks scene facts"):
        evaluate(tiny_clip_dir, plain, "all", ["vqa"], tmp_path / "r")
    with pytest.raises(UserError, match="lacks capability generate"):
        evaluate(tiny_clip_dir, plain, "all", ["captioning"], tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_vqa_and_nlvr_and_itm_metrics_by_hand() -> None:
    q = lambda t, a, c: VQAQuestion("k", t, "?", a, c, c)
    items = [q("color", "red", ("red", "blue")), q("color", "blue", ("red", "blue")), q("count", "one", ("one", "two", "three"))]
    m = vqa_metrics(items, ["red", "red", "one"])
    assert m["vqa_accuracy"] == pytest.approx(2 / 3) and m["vqa_acc_color"] == 0.5 and m["vqa_acc_count"] == 1.0
    assert m["vqa_chance"] == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    n = nlvr_metrics([True, False, False, False], [True, True, False, False], ["both", "both", "more", "more"])
    assert n["nlvr_accuracy"] == 0.75 and n["nlvr_acc_both"] == 0.5 and n["nlvr_majority"] == 0.75
    i = itm_metrics(torch.tensor([1.0, -1.0, 2.0]), torch.tensor([-1.0, -2.0, 3.0]))
    # decisions: pos > 0: T F T; neg <= 0: T T F -> 4/6; pos > neg: T T F -> 2/3
    assert i["itm_accuracy"] == pytest.approx(4 / 6) and i["itm_pair_accuracy"] == pytest.approx(2 / 3)
    assert negative_captions(["a", "a", "b"]) == ["b", "b", "a"]


def test_linear_probe_separates_separable_features() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    y = torch.arange(3).repeat(30)
    x = centres[y] + 0.5 * torch.randn(90, 2, generator=g)
    w = fit_logistic_regression(x, y, 3)
    assert (predict(w, x) == y).float().mean() == 1.0
    assert predict(w, torch.tensor([[2.5, 0.2], [-2.0, -2.5]])).tolist() == [0, 2]


def test_probe_penalty_sweep_prefers_weak_penalty_for_small_scale_features() -> None:
    # imbalanced classes (3:1) on features shrunk 100x: a strong penalty keeps the weights near 0, so the unpenalised
    # bias predicts the majority class (75%); no penalty separates them
    g = torch.Generator().manual_seed(1)
    y = (torch.arange(80) % 4 == 0).long()
    x = 0.01 * (torch.stack([y * 2.0 - 1, torch.zeros(80)], dim=1) + 0.3 * torch.randn(80, 2, generator=g))
    assert choose_l2(x, y, 2, (1.0, 0.0)) == 0.0
    assert choose_l2(x[:3], y[:3], 2) == 1e-3  # too few samples to hold any out


@pytest.mark.parametrize("name", [n for n in family_names() if n != "clip"])  # clip: test_suite_on_tiny_clip
def test_every_family_runs_the_tasks_it_fits(name: str, shapes_dataset: Path, tmp_path: Path) -> None:
    """Each other registered family (untrained, its tiny recipe at 32 px) through every suite task that fits it."""
    family = get_family(name)
    data = dataset_offers(shapes_dataset, "validation")
    tasks, skipped = suite_tasks("default", family, data)
    offers = family_offers(family)
    for task in TASKS:  # the benchmark-layout tasks (vqav2, nlvr2) need data a shapes dataset lacks
        fits = any(need <= offers for need in TASKS[task].model_any) and TASKS[task].data <= data
        assert (task in tasks) == fits, (task, skipped)
    model_dir = tmp_path / "model"
    captions = pq.read_table(shapes_dataset / "samples.parquet", columns=["caption"]).column("caption").to_pylist()
    train_tokenizer(captions, model_dir, TokenizerConfig(vocab_size=128))
    tokenizer = load_tokenizer(model_dir)
    recipe = family.recipe("tiny", {"image_size": 32, "max_text_length": 16})
    torch.manual_seed(0)
    family.save(family.build_model(recipe, len(tokenizer), special_token_ids(tokenizer)), model_dir, recipe)
    metrics = evaluate(model_dir, shapes_dataset, "validation", tasks, tmp_path / "report", baseline=False)
    for task in tasks:  # the task's headline, or its stand-in (a dual encoder's ITM is its cosine's pair accuracy)
        key = next((k for k in TASKS[task].headlines if k in metrics), TASKS[task].headline)
        assert 0.0 <= metrics[key] <= 1.0, task
