"""The eval options (``components/evaluation/options.py``) on a tiny CLIP and a small shapes dataset: class names
and templates that override the dataset's own for zero-shot classification (result, cache key, report), their bad
files as one-line errors, the untrained baseline's rule and an eval without it through the leaderboard, and the
device."""
import json
from pathlib import Path

import pytest
import torch
from eval_fixtures import make_dataset, one_torch_thread, shapes_dataset, tiny_clip_dir  # noqa: F401  (fixtures)
from vlforge.catalog import Catalog
from vlforge.components.data.loader import read_split
from vlforge.components.evaluation.leaderboard import leaderboard_rows, render_html
from vlforge.components.evaluation.metrics import (
    classifier_weights,
    zeroshot_classification_metrics,
    zeroshot_logits,
)
from vlforge.components.evaluation.options import (
    BASELINE_AUTO_MAX_SAMPLES,
    EvalOptions,
    dataset_classes,
    resolve_device,
    wants_baseline,
)
from vlforge.components.evaluation.runner import evaluate
from vlforge.components.evaluation.tasks import EvalContext
from vlforge.components.models.registry import read_family_file
from vlforge.components.stages import eval_plan, run_eval
from vlforge.components.tokenizer import load_tokenizer

from vlforge.errors import UserError

ZS = ["zero_shot_classification"]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def expected_zero_shot(model_dir: Path, dataset: Path, names: list[str], templates: list[str]) -> dict[str, float]:
    """CLIP_benchmark's metrics computed by hand: class i of the dataset prompted as ``names[i]``."""
    family, recipe = read_family_file(model_dir)
    ctx = EvalContext(family, family.load(model_dir).eval(), recipe, load_tokenizer(model_dir),
                      read_split(dataset, "validation"))
    classes = dataset_classes(dataset)
    emb = ctx.embed_texts([t.format(c) for c in names for t in templates]).view(len(names), len(templates), -1)
    logits = zeroshot_logits(ctx.image_embeddings(), classifier_weights(emb))
    return zeroshot_classification_metrics(logits, [classes.index(s.meta["label"]) for s in ctx.samples])


@pytest.fixture
def catalog(home: Path, tiny_clip_dir: Path, shapes_dataset: Path) -> Catalog:
    catalog = Catalog(home / "catalog")
    catalog.register(kind="dataset", name="shapes", files=shapes_dataset, config={})
    catalog.register(kind="model", name="clip-tiny", family="clip", files=tiny_clip_dir, config={})
    return catalog


def test_override_templates_and_classnames_change_the_result_and_the_key(
        tiny_clip_dir: Path, shapes_dataset: Path, catalog: Catalog, tmp_path: Path) -> None:
    classes = dataset_classes(shapes_dataset)
    assert len(classes) >= 3
    templates = write(tmp_path / "t.txt", "a {} drawn on white\n\nthe {}, in colour\n")
    options = EvalOptions.from_files(templates=templates)
    assert options.templates == ("a {} drawn on white", "the {}, in colour")
    out = tmp_path / "report"
    metrics = evaluate(tiny_clip_dir, shapes_dataset, "validation", ZS, out, baseline=False, options=options)
    expected = expected_zero_shot(tiny_clip_dir, shapes_dataset, classes, list(options.templates))
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)
    default = evaluate(tiny_clip_dir, shapes_dataset, "validation", ZS, tmp_path / "default", baseline=False)
    assert default["acc1"] != metrics["acc1"] or default["mean_per_class_recall"] != metrics["mean_per_class_recall"]
    report = json.loads((out / "report.json").read_text())
    assert report["zero_shot"] == {"templates": list(options.templates)} and report["baseline"] is False

    # class i renamed by line i: the prompts use the new names, the rows keep the dataset's labels
    names = write(tmp_path / "names.txt", "".join(f"shape number {i}\n" for i in range(len(classes))))
    renamed = EvalOptions.from_files(names, templates)
    metrics = evaluate(tiny_clip_dir, shapes_dataset, "validation", ZS, tmp_path / "renamed", baseline=False,
                       options=renamed)
    expected = expected_zero_shot(tiny_clip_dir, shapes_dataset, list(renamed.classnames), list(renamed.templates))
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)

    key = lambda o: eval_plan("clip-tiny", "shapes", ZS, "validation", catalog, o)[0]  # noqa: E731
    same_elsewhere = EvalOptions.from_files(templates=write(tmp_path / "copy.txt", templates.read_text()))
    assert key(options) == key(same_elsewhere)  # the contents are keyed, not the path
    assert len({key(EvalOptions()), key(options), key(renamed), key(EvalOptions(baseline=False))}) == 4
    assert key(EvalOptions()) == key(EvalOptions(baseline=True))  # the default on this small split
    assert key(EvalOptions(device="cpu")) == key(EvalOptions(device="auto"))  # the device is not keyed


def test_bad_files_are_one_line_errors(catalog: Catalog, tmp_path: Path) -> None:
    n = len(dataset_classes(catalog.path(catalog.get("shapes").id)))
    cases = {
        "does not exist": dict(templates=tmp_path / "missing.txt"),
        "is empty": dict(classnames=write(tmp_path / "empty.txt", "\n\n")),
        "has no {} for the class name": dict(templates=write(tmp_path / "bad.txt", "a photo of a {}\na photo\n")),
        "template 'a {}' repeats line 1": dict(templates=write(tmp_path / "dup.txt", "a {}\n\na {}\n")),
        "class name 'b' repeats line 2": dict(classnames=write(tmp_path / "dupc.txt", "a\nb\nb\n")),
    }
    for message, files in cases.items():
        with pytest.raises(UserError, match=message.replace("{", r"\{").replace("}", r"\}")) as info:
            EvalOptions.from_files(**files)
        assert "\n" not in str(info.value)
    short = EvalOptions.from_files(write(tmp_path / "two.txt", "round\nsquare\n"))
    with pytest.raises(UserError, match=rf"names 2 classes but dataset 'shapes' has {n} classes"):
        eval_plan("clip-tiny", "shapes", ZS, "validation", catalog, short)
    with pytest.raises(UserError, match="--templates apply to task zero_shot_classification"):
        eval_plan("clip-tiny", "shapes", ["retrieval"], "validation", catalog,
                  EvalOptions.from_files(templates=write(tmp_path / "t.txt", "a {}\n")))
    with pytest.raises(UserError, match="--device 'gpu' is not one of auto, cpu, cuda, cuda:N"):
        EvalOptions.from_files(device="gpu")
    assert catalog.list(kind="eval") == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_without_a_gpu(catalog: Catalog) -> None:
    assert resolve_device("auto") == torch.device("cpu")
    for device in ("cuda", "cuda:1"):
        with pytest.raises(UserError, match=f"--device '{device}': torch sees no CUDA GPU"):
            eval_plan("clip-tiny", "shapes", ZS, "validation", catalog, EvalOptions(device=device))


def test_baseline_rule() -> None:
    assert wants_baseline(None, BASELINE_AUTO_MAX_SAMPLES) and not wants_baseline(None, BASELINE_AUTO_MAX_SAMPLES + 1)
    assert wants_baseline(True, 10 * BASELINE_AUTO_MAX_SAMPLES) and not wants_baseline(False, 3)


def test_an_eval_without_baseline_is_registered_and_ranked(catalog: Catalog, tmp_path: Path) -> None:
    names = write(tmp_path / "names.txt", "".join(f"class {i}\n" for i in range(len(dataset_classes(
        catalog.path(catalog.get("shapes").id))))))
    options = EvalOptions.from_files(names, baseline=False, device="cpu")
    result = run_eval("clip-tiny", "shapes", ["retrieval", *ZS], "validation", catalog, None, options)
    ev = result.artifact
    assert not [k for k in ev.metrics if k.startswith("baseline_")] and "zs_top1" in ev.metrics
    assert ev.config["baseline"] is False and ev.config["device"] == "cpu"
    assert ev.config["classnames"] == list(options.classnames) and "templates" not in ev.config
    report = json.loads((catalog.path(ev.id) / "report.json").read_text())
    assert report["device"] == "cpu" and all("baseline" not in t for t in report["tasks"].values())
    assert run_eval("clip-tiny", "shapes", ["retrieval", *ZS], "validation", catalog, None,
                    options.model_copy(update={"device": "auto"})).cached  # another device: the same entry
    rows = leaderboard_rows(catalog)
    assert sorted(r["task"] for r in rows) == ["retrieval", "zero_shot_classification"]
    assert all(r["baseline"] is None for r in rows)
    page = render_html(rows)
    assert page.count("<tr>") == 1 + len(rows) and "data:image/png;base64," in page
