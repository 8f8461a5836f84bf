"""image-teacher-specific checks (the shared battery covers learning and save/load of the default mim objective):
ViT-B/16's size, a stable label mapping saved with the checkpoint, the supervised objective, and one head per
objective (nothing left unused)."""
from pathlib import Path

import pytest
import torch
from vlforge.components.models.image_teacher.family import batch_labels, label_index
from vlforge.components.models.masking import IGNORE_INDEX
from vlforge.components.models.registry import ImageTextBatch, get_family

from vlforge.errors import UserError

SMALL = {"image_size": 32, "max_text_length": 12, "hidden_size": 32, "num_layers": 1}


def batch(labels: list[str | None], seed: int = 1) -> ImageTextBatch:
    n = len(labels)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 64, (n, 12), generator=g)
    return ImageTextBatch(torch.randn(n, 3, 32, 32, generator=g), ids, torch.ones_like(ids), ["c"] * n,
                          [f"k{i}" for i in range(n)], meta=[{"label": lab} if lab else {} for lab in labels])


@pytest.mark.parametrize("objective", ["mim", "supervised"])
def test_base_is_vit_b16_size(objective: str) -> None:
    # ViT-B/16: 86M parameters (Dosovitskiy et al. 2021, Table 1). Counted: patch projection, [CLS], 197 positions,
    # 12 layers, final LayerNorm, and the objective's head (mim: a 768 -> 16x16x3 pixel head + the mask token,
    # 86,390,016; supervised: a 1,000-class classifier, 86,567,656).
    family = get_family("image-teacher")
    with torch.device("meta"):
        model = family.build_model(family.recipe("base", {"objective": objective}), 30522, {})
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 86_000_000) / 86_000_000 < 0.01, count


def test_label_mapping_is_stable_and_documented() -> None:
    # blake2b buckets, fixed here: Python's hash() would change from process to process and fail this
    assert [label_index(s, 64) for s in ("circle", "square", "triangle", "star", "diamond", "cross")] == [61, 42, 43, 9, 33, 26]
    assert label_index("circle", 1000) == label_index("circle", 1000)
    assert label_index(None, 64) == label_index("", 64) == IGNORE_INDEX
    assert label_index("star", 64, ["circle", "star"]) == 1
    assert label_index("cross", 64, ["circle", "star"]) == IGNORE_INDEX


def test_label_vocabulary_is_saved_with_the_checkpoint(tmp_path: Path) -> None:
    family = get_family("image-teacher")
    recipe = family.recipe("tiny", {**SMALL, "objective": "supervised", "class_names": ["square", "circle"]})
    model = family.build_model(recipe, 64, {})
    family.save(model, tmp_path, recipe)
    loaded = family.load(tmp_path)
    assert loaded.config.vlforge_class_names == ["square", "circle"]
    assert loaded.config.vlforge_num_classes == 2 and loaded.classifier.out_features == 2
    assert batch_labels([{"label": "circle"}, {}, {"label": "star"}], loaded.config, torch.device("cpu")).tolist() == [1, IGNORE_INDEX, IGNORE_INDEX]
    hashed = family.build_model(family.recipe("tiny", {**SMALL, "objective": "supervised"}), 64, {})
    assert hashed.config.vlforge_label_rule == "blake2b8-mod" and hashed.config.vlforge_class_names is None


def test_one_head_per_objective() -> None:
    family = get_family("image-teacher")
    mim = family.build_model(family.recipe("tiny", SMALL), 64, {})
    sup = family.build_model(family.recipe("tiny", {**SMALL, "objective": "supervised"}), 64, {})
    assert hasattr(mim, "mim_head") and not hasattr(mim, "classifier") and mim.vit.embeddings.mask_token is not None
    assert hasattr(sup, "classifier") and not hasattr(sup, "mim_head") and sup.vit.embeddings.mask_token is None


def test_supervised_objective_learns_labels_and_needs_them() -> None:
    family = get_family("image-teacher")
    recipe = family.recipe("tiny", {**SMALL, "objective": "supervised"})
    torch.manual_seed(0)
    model = family.build_model(recipe, 64, {})
    b = batch(["circle", "square", None, "circle", "star", "square"])
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(30):
        out = family.training_step(model, b, recipe)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["ce"]))
    assert losses[-1] < 0.25 * losses[0], losses
    assert float(out["accuracy"]) == 1.0  # the five labelled samples; the unlabelled one is ignored
    with pytest.raises(UserError, match="needs class labels"):
        family.training_step(model, batch([None, None]), recipe)


def test_encode_images_is_normalised_cls() -> None:
    family = get_family("image-teacher")
    model = family.build_model(family.recipe("tiny", SMALL), 64, {}).eval()
    with torch.no_grad():
        feats = family.encode_images(model, batch(["a"] * 3).pixel_values)
    assert feats.shape == (3, 32) and torch.allclose(feats.norm(dim=-1), torch.ones(3), atol=1e-5)
