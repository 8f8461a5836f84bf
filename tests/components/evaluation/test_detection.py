"""The ``detection`` task: COCO box mAP (``metrics.detection.coco_box_map``) is 1 for the ground truth itself and
what the IoU thresholds give by hand for shifted boxes, equals pycocotools driven directly through its own files,
and a tiny UniT trained a few steps with its detection task runs through the eval runner end to end; the task is
offered only where the data has boxes and the family detects."""
from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path

import pytest
import torch
from eval_fixtures import one_torch_thread, shapes_dataset, write_shapes_dataset  # noqa: F401  (fixtures)
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from vlforge.components.data.loader import ImageTransform, decode_image, read_split
from vlforge.components.evaluation.metrics.detection import ImageBoxes, coco_box_map
from vlforge.components.evaluation.runner import evaluate
from vlforge.components.evaluation.tasks import check_fit, dataset_offers, suite_tasks
from vlforge.components.models.registry import ImageTextBatch, get_family, special_token_ids
from vlforge.components.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

from vlforge.errors import UserError

SIZES = [(48, 48), (64, 64)]
# every box 0.3 wide, so a horizontal shift of 0.06 leaves each an IoU of (0.24 h) / (2 x 0.3 h - 0.24 h) = 2/3
TRUTH = [ImageBoxes([[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.8, 0.8]], ["circle", "star"]),
         ImageBoxes([[0.2, 0.3, 0.5, 0.7]], ["circle"])]


def shifted(dx: float) -> list[ImageBoxes]:
    return [ImageBoxes([[b[0] + dx, b[1], b[2] + dx, b[3]] for b in t.boxes], t.labels, [0.9] * len(t.labels)) for t in TRUTH]


def test_map_is_one_for_the_ground_truth_and_falls_with_the_shift() -> None:
    exact = coco_box_map(TRUTH, shifted(0.0), SIZES)
    assert exact == {"det_map": pytest.approx(1.0), "det_map_50": pytest.approx(1.0), "det_map_75": pytest.approx(1.0)}
    # IoU 2/3 passes the thresholds 0.50, 0.55, 0.60, 0.65 of COCO's ten (AP 1 there) and no other (AP 0)
    out = coco_box_map(TRUTH, shifted(0.06), SIZES)
    assert out == {"det_map": pytest.approx(0.4), "det_map_50": pytest.approx(1.0), "det_map_75": pytest.approx(0.0)}
    # IoU 0.6 / 1.4 = 3/7 < 0.5 passes none
    assert coco_box_map(TRUTH, shifted(0.12), SIZES)["det_map"] == 0.0
    # a wrong class is no detection of the right one
    wrong = [ImageBoxes(t.boxes, ["square"] * len(t.labels), [0.9] * len(t.labels)) for t in TRUTH]
    assert coco_box_map(TRUTH, wrong, SIZES)["det_map"] == 0.0
    # a confident false positive ranked above the true boxes lowers AP below 1
    extra = [ImageBoxes([*t.boxes, [0.0, 0.8, 0.1, 0.9]], [*t.labels, "circle"], [0.5] * len(t.labels) + [0.99])
             for t in TRUTH]
    assert 0.0 < coco_box_map(TRUTH, extra, SIZES)["det_map"] < 1.0


def test_map_equals_pycocotools_on_its_own_files(tmp_path: Path) -> None:
    rng = random.Random(0)
    truth, preds, sizes = [], [], []
    for _ in range(12):
        w = h = rng.choice([48, 96])
        gt_boxes, gt_labels, p_boxes, p_labels, p_scores = [], [], [], [], []
        for _ in range(rng.randint(1, 3)):
            x0, y0, side = rng.uniform(0, 0.6), rng.uniform(0, 0.6), rng.uniform(0.15, 0.35)
            gt_boxes.append([x0, y0, x0 + side, y0 + side])
            gt_labels.append(rng.choice(["circle", "square", "star"]))
        for box, label in zip(gt_boxes, gt_labels):
            j = [v + rng.gauss(0, 0.03) for v in box]
            p_boxes.append(j)
            p_labels.append(label if rng.random() < 0.8 else "square")
            p_scores.append(rng.random())
        p_boxes.append([0.0, 0.0, 0.3, 0.3])  # a false positive
        p_labels.append("circle")
        p_scores.append(rng.random())
        truth.append(ImageBoxes(gt_boxes, gt_labels))
        preds.append(ImageBoxes(p_boxes, p_labels, p_scores))
        sizes.append((w, h))
    ours = coco_box_map(truth, preds, sizes)
    # the same data as COCO files, read and scored by pycocotools itself
    names = sorted({n for t in truth for n in t.labels} | {n for p in preds for n in p.labels})
    cat = {n: i + 1 for i, n in enumerate(names)}
    gt = {"images": [{"id": i + 1, "width": w, "height": h} for i, (w, h) in enumerate(sizes)], "annotations": [],
          "categories": [{"id": i, "name": n} for n, i in cat.items()]}
    res = []
    for i, (t, p, (w, h)) in enumerate(zip(truth, preds, sizes)):
        for b, n in zip(t.boxes, t.labels):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1, "category_id": cat[n], "iscrowd": 0,
                                      "bbox": [b[0] * w, b[1] * h, (b[2] - b[0]) * w, (b[3] - b[1]) * h],
                                      "area": (b[2] - b[0]) * w * (b[3] - b[1]) * h})
        for b, n, s in zip(p.boxes, p.labels, p.scores):
            res.append({"image_id": i + 1, "category_id": cat[n], "score": s,
                        "bbox": [b[0] * w, b[1] * h, (b[2] - b[0]) * w, (b[3] - b[1]) * h]})
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "gt.json"))
        ev = COCOeval(coco, coco.loadRes(str(tmp_path / "res.json")), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ours == {"det_map": pytest.approx(ev.stats[0]), "det_map_50": pytest.approx(ev.stats[1]),
                    "det_map_75": pytest.approx(ev.stats[2])}
    assert 0.2 < ours["det_map"] < 0.95


def test_detection_is_offered_only_with_boxes_and_a_detector(shapes_dataset: Path, tmp_path: Path) -> None:
    unit, clip = get_family("unit"), get_family("clip")
    data = dataset_offers(shapes_dataset, "all")
    assert "boxes" in data
    check_fit(["detection"], unit, data, "shapes")
    assert "detection" in suite_tasks("default", unit, data)[0]
    with pytest.raises(UserError, match="lacks capability detection"):
        check_fit(["detection"], clip, data, "shapes")
    no_facts = write_shapes_dataset(tmp_path / "plain", 8, with_facts=False)
    with pytest.raises(UserError, match="lacks object boxes"):
        check_fit(["detection"], unit, dataset_offers(no_facts, "all"), "plain")


UNIT_SMALL = {"image_size": 48, "max_text_length": 16, "backbone_embedding_size": 16, "backbone_hidden_sizes": [16, 32, 64],
              "encoder_hidden_size": 64, "encoder_layers": 1, "encoder_ffn_dim": 128, "text_hidden_size": 64,
              "text_layers": 1, "text_intermediate_size": 128, "decoder_hidden_size": 64, "decoder_layers": 2,
              "decoder_ffn_dim": 128, "num_queries": 2, "detection_queries": 6, "dropout": 0.0,
              "task_weights": {"detection": 1.0, "itm": 1.0}}


def test_a_tiny_unit_trained_with_detection_runs_the_task_end_to_end(shapes_dataset: Path, tmp_path: Path) -> None:
    family = get_family("unit")
    samples = read_split(shapes_dataset, "train")
    out = tmp_path / "unit"
    train_tokenizer([s.caption for s in samples], out, TokenizerConfig(vocab_size=128))
    tokenizer = load_tokenizer(out)
    recipe = family.recipe("tiny", UNIT_SMALL)
    torch.manual_seed(0)
    model = family.build_model(recipe, len(tokenizer), special_token_ids(tokenizer))
    transform = ImageTransform(recipe.image_size, family.image_mean, family.image_std)
    pixels = torch.stack([transform(decode_image(s.image)) for s in samples])
    enc = tokenizer([s.caption for s in samples], padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    detection_losses = []
    for step in range(40):
        batch = ImageTextBatch(pixels, enc["input_ids"], enc["attention_mask"], [s.caption for s in samples],
                               [s.key for s in samples], meta=[s.meta for s in samples], step=step, tokenizer=tokenizer,
                               max_text_length=16)
        result = family.training_step(model, batch, recipe)
        opt.zero_grad()
        result["loss"].backward()
        opt.step()
        if "loss_detection" in result:
            assert {"loss_ce", "loss_bbox", "loss_giou"} <= set(result)
            detection_losses.append(float(result["loss_detection"]))
    assert len(detection_losses) >= 10 and detection_losses[-1] < 0.7 * detection_losses[0], detection_losses
    family.save(model.eval(), out, recipe)
    metrics = evaluate(out, shapes_dataset, "train", ["detection"], tmp_path / "eval")
    for key in ("det_map", "det_map_50", "det_map_75", "baseline_det_map"):
        assert 0.0 <= metrics[key] <= 1.0, metrics
    assert metrics["det_map_50"] >= metrics["det_map_75"] and metrics["det_objects"] > metrics["det_images"] > 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["tasks"]["detection"]["headline"] == "det_map"
    assert (tmp_path / "eval" / "per_sample" / "detection.parquet").is_file()
    # 20 detection steps on these 25 scenes: det_map_50 0.39 against the untrained model's 0.0 (seed 0, one thread)
    assert metrics["det_map_50"] > metrics["baseline_det_map_50"] + 0.1, metrics
