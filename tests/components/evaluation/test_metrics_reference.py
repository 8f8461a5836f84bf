"""The reference-defined metrics (vlforge.components.evaluation.metrics) on hand-computed cases.

References: LAION-AI/CLIP_benchmark clip_benchmark/metrics/zeroshot_retrieval.py and zeroshot_classification.py,
GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py, huggingface/evaluate metrics/glue/glue.py."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from vlforge.components.evaluation.metrics import (
    classifier_weights,
    glue_metrics,
    mean_per_class_recall,
    normalize_answer,
    read_classnames,
    read_templates,
    topk_accuracy,
    vqa_accuracy,
    vqa_score,
    zeroshot_classification_metrics,
    zeroshot_logits,
    zeroshot_retrieval_metrics,
)

from vlforge.errors import UserError

# ---------------------------------------------------------------- retrieval

# 3 images (the unit axes) x 2 captions each; every caption is a unit vector, so score = its coordinate.
IMAGES = torch.eye(3)
TEXTS = torch.tensor([
    [0.0, 1.0, 0.0],  # c0, image 0: points at image 1
    [1.0, 0.0, 0.0],  # c1, image 0
    [0.6, 0.8, 0.0],  # c2, image 1
    [0.0, 0.6, 0.8],  # c3, image 1: points at image 2
    [0.0, 0.0, 1.0],  # c4, image 2
    [0.8, 0.0, 0.6],  # c5, image 2: points at image 0
])
TEXT_TO_IMAGE = [0, 0, 1, 1, 2, 2]


def test_retrieval_several_captions_per_image() -> None:
    m = zeroshot_retrieval_metrics(IMAGES, TEXTS, TEXT_TO_IMAGE)
    assert list(m) == ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
    # i2t. image 0 over texts [0, 1, .6, 0, 0, .8]: top-1 is c1, its SECOND caption (its first, c0, is last) -> hit.
    # image 1 over [1, 0, .8, .6, 0, 0]: top-1 is c0 (image 0's) -> miss; c2 is second -> hit at 5.
    # image 2 over [0, 0, 0, .8, 1, .6]: top-1 c4 -> hit.
    assert m["i2t_r1"] == pytest.approx(2 / 3)
    assert m["i2t_r5"] == 1.0 and m["i2t_r10"] == 1.0  # k = 10 > 6 texts is clipped
    # t2i. c0 -> image 1 (miss), c1 -> 0 (hit), c2 -> 1 (hit), c3 -> 2 (miss), c4 -> 2 (hit), c5 -> 0 (miss).
    assert m["t2i_r1"] == pytest.approx(3 / 6)
    assert m["t2i_r5"] == 1.0 and m["t2i_r10"] == 1.0  # k > 3 images is clipped


def test_retrieval_normalises_both_sides_and_takes_any_k() -> None:
    scaled = zeroshot_retrieval_metrics(IMAGES * torch.tensor([[1.0], [10.0], [0.1]]), TEXTS * 7, TEXT_TO_IMAGE, ks=(1, 2))
    # after normalisation nothing changes; i2t R@2: image 1's top two are c0 (image 0's, 1.0) and c2 (its own, .8)
    assert scaled["i2t_r1"] == pytest.approx(2 / 3) and scaled["t2i_r1"] == pytest.approx(0.5)
    assert scaled["i2t_r2"] == 1.0
    raw = zeroshot_retrieval_metrics(IMAGES * torch.tensor([[1.0], [10.0], [0.1]]), TEXTS, TEXT_TO_IMAGE, ks=(1,), normalize=False)
    # unnormalised, image 1's column is 10x: c1 [1, 0, 0] still -> image 0; c4 [0, 0, .1] still -> 2; c5 [.8, 0, .06] -> 0;
    # c0 -> 1 (miss), c2 [.6, 8, 0] -> 1 (hit), c3 [0, 6, .08] -> 1 (hit now)
    assert raw["t2i_r1"] == pytest.approx(4 / 6)


def test_retrieval_image_without_caption_is_a_miss() -> None:
    m = zeroshot_retrieval_metrics(torch.eye(3), torch.eye(3)[:2], [0, 1], ks=(1,))
    assert m["i2t_r1"] == pytest.approx(2 / 3)  # image 2 has no caption: a miss, still counted (the reference's nan > 0)
    assert m["t2i_r1"] == 1.0


def test_retrieval_ties_broken_by_torch_topk() -> None:
    # all scores equal: which image a caption "retrieves" is torch.topk's choice, as in the reference
    images = torch.ones(4, 2)
    texts = torch.ones(4, 2)
    t2i = torch.tensor([0, 1, 2, 3])
    m = zeroshot_retrieval_metrics(images, texts, t2i, ks=(1, 2))
    scores = torch.nn.functional.normalize(texts, dim=-1) @ torch.nn.functional.normalize(images, dim=-1).t()
    for k in (1, 2):
        top = torch.topk(scores, k, dim=1).indices
        assert m[f"t2i_r{k}"] == pytest.approx(float((top == t2i[:, None]).any(dim=1).float().mean()))
        top = torch.topk(scores.t(), k, dim=1).indices
        assert m[f"i2t_r{k}"] == pytest.approx(float((top == t2i[:, None]).any(dim=1).float().mean()))


def test_retrieval_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="text_to_image"):
        zeroshot_retrieval_metrics(IMAGES, TEXTS, [0, 0, 1])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        zeroshot_retrieval_metrics(IMAGES, TEXTS, [0, 0, 1, 1, 2, 3])
    with pytest.raises(ValueError, match="dimension"):
        zeroshot_retrieval_metrics(IMAGES, TEXTS[:, :2], TEXT_TO_IMAGE)


# ---------------------------------------------------------------- VQA


def ten(answer: str, times: int, other: str = "cat") -> list[str]:
    return [answer] * times + [other] * (10 - times)


def test_vqa_leave_one_out_accuracy() -> None:
    # 10 leave-one-out subsets of 9; a subset scores min(#matches / 3, 1).
    assert vqa_accuracy("dog", ten("dog", 10)) == 1.0
    assert vqa_accuracy("dog", ten("dog", 4)) == 1.0  # every subset keeps >= 3
    # 3 of 10: the 3 subsets without a matching annotator have 2 -> 2/3, the other 7 have 3 -> 1: (2 + 7) / 10.
    # (min(3/3, 1) = 1.0 is the paper's shorthand; the official code gives 0.9.)
    assert vqa_accuracy("dog", ten("dog", 3)) == pytest.approx(0.9)
    # 2 of 10: 2 subsets have 1 -> 1/3, 8 have 2 -> 2/3: (2/3 + 16/3) / 10 = 0.6
    assert vqa_accuracy("dog", ten("dog", 2)) == pytest.approx(0.6)
    # 1 of 10: 1 subset has 0, 9 have 1 -> 1/3: 3 / 10
    assert vqa_accuracy("dog", ten("dog", 1)) == pytest.approx(0.3)
    assert vqa_accuracy("bird", ten("dog", 5)) == 0.0


def test_vqa_any_number_of_answers() -> None:
    assert vqa_accuracy("x", ["x"]) == 0.0  # one annotator: nothing left once it is left out
    assert vqa_accuracy("x", ["x", "y"]) == pytest.approx((0 + 1 / 3) / 2)
    assert vqa_accuracy("x", ["x", "x", "x", "x"]) == 1.0
    with pytest.raises(ValueError):
        vqa_accuracy("x", [])


@pytest.mark.parametrize(("raw", "normal"), [
    ("Two", "2"),
    ("the dog.", "dog"),
    ("yes!", "yes"),
    ("  Yes\n", "yes"),
    ("Ten", "10"),
    ("none", "0"),
    ("an apple", "apple"),
    ("1,000", "1000"),  # a comma between digits: marks are deleted, not spaced
    ("2,3 (approx)", "23 approx"),  # ... and then every mark in the answer is deleted
    ("x,y", "x y"),
    ("black-and-white", "black and white"),  # no space beside the mark: it becomes a space
    ("black - white", "black white"),  # a space beside it: deleted
    ("3.5", "3.5"),  # a period before a digit stays
    ("5.", "5"),
    ("a.m.", "am"),
    ("dont", "don't"),
    ("isnt it", "isn't it"),
    ("It's", "it's"),  # apostrophes are not punctuation here
    ("Im", "im"),  # the table's "Im" key cannot match after lower-casing
    ("what?!", "what"),
    ('"hi"', "hi"),
])
def test_vqa_normalisation(raw: str, normal: str) -> None:
    assert normalize_answer(raw) == normal


def test_vqa_normalises_only_where_annotators_disagree() -> None:
    assert vqa_accuracy("Two", ["2"] * 9 + ["3"]) == 1.0
    assert vqa_accuracy("the dog.", ten("dog", 2, "a dog")) == 1.0  # "a dog" normalises to "dog" too
    # all ten agree: the official code compares the raw (whitespace-stripped) strings
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0


def test_vqa_score_is_the_mean() -> None:
    assert vqa_score(["dog", "dog", "x"], [ten("dog", 10), ten("dog", 2), ten("dog", 3)]) == pytest.approx((1 + 0.6 + 0) / 3)
    with pytest.raises(ValueError):
        vqa_score(["a"], [])


# ---------------------------------------------------------------- zero-shot classification


def test_classifier_weights_average_normalised_templates() -> None:
    per_class = [torch.tensor([[2.0, 0.0], [0.0, 3.0]]), torch.tensor([[0.0, 5.0]])]
    w = classifier_weights(per_class)
    # class 0: (1, 0) and (0, 1) average to (.5, .5), renormalised to (1, 1)/sqrt 2; class 1: (0, 1)
    r = 1 / math.sqrt(2)
    assert torch.allclose(w, torch.tensor([[r, 0.0], [r, 1.0]]))
    same = classifier_weights(torch.tensor([[[2.0, 0.0], [0.0, 3.0]], [[0.0, 5.0], [0.0, 1.0]]]))
    assert torch.allclose(same, w)
    logits = zeroshot_logits(torch.tensor([[0.0, 4.0], [3.0, 0.0]]), w)
    assert torch.allclose(logits, 100 * torch.tensor([[r, 1.0], [r, 0.0]]))


def test_acc1_acc5_on_nine_classes() -> None:
    # every row ranks the classes 0, 1, ..., 8; the targets sit at ranks 1, 3, 5 and 6
    logits = torch.arange(8.0, -1.0, -1.0).repeat(4, 1)
    targets = [0, 2, 4, 5]
    assert topk_accuracy(logits, targets, (1, 5)) == [0.25, 0.75]
    m = zeroshot_classification_metrics(logits, targets)
    assert m["acc1"] == 0.25 and m["acc5"] == 0.75
    # argmax is class 0 everywhere: class 0 recall 1, classes 2, 4, 5 recall 0
    assert m["mean_per_class_recall"] == pytest.approx(0.25)
    assert topk_accuracy(logits[:, :3], [0, 2, 2, 1], (1, 5)) == [0.25, 1.0]  # k clipped to 3 classes


def test_mean_per_class_recall_imbalanced() -> None:
    targets = [0] * 6 + [1] * 2 + [2]
    predictions = [0] * 6 + [1, 0] + [3]  # class 3 is predicted but never a target: it does not count
    assert mean_per_class_recall(predictions, targets) == pytest.approx((1 + 0.5 + 0) / 3)
    # plain accuracy would be 7/9
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        expected = sklearn_metrics.balanced_accuracy_score(targets, predictions)
    assert mean_per_class_recall(predictions, targets) == pytest.approx(expected)


def test_classification_rejects_targets_out_of_range() -> None:
    with pytest.raises(ValueError, match="targets"):
        zeroshot_classification_metrics(torch.zeros(2, 3), [0, 3])


def test_read_templates_and_classnames(tmp_path: Path) -> None:
    good = tmp_path / "templates.txt"
    good.write_text("a photo of a {}.\n\n  a drawing of a {}  \n{}\n\n", encoding="utf-8")
    assert read_templates(good) == ["a photo of a {}.", "a drawing of a {}", "{}"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a {}.\na photo of a thing\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.txt line 2"):
        read_templates(bad)
    for text in ("a {c}\n", "a {} {}\n", "a {{}}\n"):
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(UserError, match=r"bad\.txt line 1"):
            read_templates(bad)
    with pytest.raises(UserError, match="does not exist"):
        read_templates(tmp_path / "missing.txt")
    names = tmp_path / "classes.txt"
    names.write_text("cat\n dog \ngoldfish\n\n", encoding="utf-8")
    assert read_classnames(names) == ["cat", "dog", "goldfish"]
    names.write_text("cat\n\ndog\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"classes\.txt line 2"):
        read_classnames(names)
    names.write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match="empty"):
        read_classnames(names)


# ---------------------------------------------------------------- GLUE

# tp = 3, fp = 2, fn = 1, tn = 2
PRED = [1, 1, 0, 0, 1, 0, 1, 1]
GOLD = [1, 0, 0, 1, 1, 0, 1, 0]


def test_glue_classification_metrics() -> None:
    # MCC = (3*2 - 2*1) / sqrt((3+2)(3+1)(2+2)(2+1)) = 4 / sqrt(240)
    assert glue_metrics("cola", PRED, GOLD) == {"matthews_correlation": pytest.approx(4 / math.sqrt(240))}
    # F1 = 2*3 / (2*3 + 2 + 1) = 2/3; accuracy 5/8
    for task in ("mrpc", "qqp"):
        assert glue_metrics(task, PRED, GOLD) == {"accuracy": pytest.approx(0.625), "f1": pytest.approx(2 / 3)}
    for task in ("sst2", "mnli", "mnli-mm", "mnli_matched", "qnli", "rte", "wnli", "MNLI-M"):
        assert glue_metrics(task, [0, 1, 2, 2], [0, 2, 2, 1]) == {"accuracy": 0.5}


def test_glue_degenerate_cases() -> None:
    assert glue_metrics("cola", [1, 1, 1], [0, 1, 0]) == {"matthews_correlation": 0.0}  # one predicted class
    assert glue_metrics("mrpc", [0, 0], [0, 0])["f1"] == 0.0  # no positives anywhere: 0/0 -> 0
    assert math.isnan(glue_metrics("stsb", [1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["pearson"])


def test_glue_stsb_pearson_and_spearman() -> None:
    pred, gold = [1, 2, 2, 3, 5], [2, 1, 4, 4, 9]
    m = glue_metrics("stsb", pred, gold)
    # deviations (-1.6, -.6, -.6, .4, 2.4) and (-2, -3, 0, 0, 5): 17 / sqrt(9.2 * 38)
    assert m["pearson"] == pytest.approx(17 / math.sqrt(9.2 * 38))
    # average ranks (1, 2.5, 2.5, 4, 5) and (2, 1, 3.5, 3.5, 5): 7.25 / 9.5
    assert m["spearmanr"] == pytest.approx(7.25 / 9.5)
    assert set(m) == {"pearson", "spearmanr"}


def test_glue_unknown_task_and_bad_labels() -> None:
    with pytest.raises(UserError, match="unknown GLUE task 'squad'"):
        glue_metrics("squad", [0], [0])
    with pytest.raises(ValueError, match="binary"):
        glue_metrics("mrpc", [0, 2], [0, 1])
    with pytest.raises(ValueError, match="integer"):
        glue_metrics("rte", [0.5, 1.0], [0, 1])
    with pytest.raises(ValueError):
        glue_metrics("rte", [0, 1], [0])


def test_glue_matches_sklearn_and_scipy() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(3, 40))
        p, y = rng.integers(0, 2, n), rng.integers(0, 2, n)
        assert glue_metrics("cola", p, y)["matthews_correlation"] == pytest.approx(sk.matthews_corrcoef(y, p), abs=1e-12)
        f1 = sk.f1_score(y_true=y, y_pred=p, zero_division=0.0)
        assert glue_metrics("mrpc", p, y)["f1"] == pytest.approx(f1, abs=1e-12)
        a = rng.integers(0, 6, n).astype(np.float32)
        b = np.round(rng.normal(size=n), 1).astype(np.float32)
        m = glue_metrics("stsb", a, b)
        assert m["pearson"] == pytest.approx(float(stats.pearsonr(a, b)[0]), abs=1e-6)
        assert m["spearmanr"] == pytest.approx(float(stats.spearmanr(a, b)[0]), abs=1e-6)
