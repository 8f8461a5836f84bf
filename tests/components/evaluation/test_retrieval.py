import pytest
import torch
from vlforge.components.evaluation.classification import (
    class_weights,
    zero_shot_metrics,
)
from vlforge.components.evaluation.retrieval import retrieval_metrics, unique_captions


def test_hand_computed_ranks() -> None:
    image = torch.eye(3)
    text = torch.tensor([[1.0, 0, 0], [0.5, 0.4, 0], [0.9, 0.8, 0.1]])
    r = retrieval_metrics(image, text, [0, 1, 2])
    # sims[i, j] = text[j, i]: image 1 -> scores [0, .4, .8] -> caption 1 rank 1; image 2 -> [0, 0, .1] rank 0
    assert r.image_rank == [0, 1, 0]
    assert r.metrics["i2t_r1"] == pytest.approx(2 / 3) and r.metrics["i2t_r5"] == 1.0
    # caption 1 -> images scores [.5, .4, 0] -> image 1 rank 1; caption 2 -> [.9, .8, .1] -> rank 2
    assert r.caption_rank == [0, 1, 2]
    assert r.metrics["t2i_r1"] == pytest.approx(1 / 3)


def test_duplicate_captions_count_as_hits() -> None:
    captions = ["a red circle", "a red circle", "a blue square"]
    uniq, ids = unique_captions(captions)
    assert uniq == ["a red circle", "a blue square"] and ids == [0, 0, 1]
    image = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    r = retrieval_metrics(image, text, ids)
    assert r.metrics["i2t_r1"] == 1.0 and r.metrics["t2i_r1"] == 1.0  # image 1 retrieving its shared caption is a hit


def test_zero_shot_with_templates() -> None:
    classes = ["circle", "square"]

    def embed(texts: list[str]) -> torch.Tensor:
        return torch.stack([torch.tensor([1.0, 0.0]) if "circle" in t else torch.tensor([0.0, 1.0]) for t in texts])

    w = class_weights(embed, classes)
    metrics, pred = zero_shot_metrics(torch.tensor([[1.0, 0.1], [0.2, 1.0], [0.9, 0.0]]), w, [0, 1, 1])
    assert pred == [0, 1, 0]
    assert abs(metrics["zs_top1"] - 2 / 3) < 1e-6 and abs(metrics["zs_mean_per_class"] - 0.75) < 1e-6
