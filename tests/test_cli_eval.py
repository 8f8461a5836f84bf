"""`vlforge run eval --suite default` and `vlforge leaderboard --publish` through the real CLI (Prefect flows), on a
dataset written with the project's shard writer and a tiny CLIP registered in the catalog; and a task that does
not fit: one line, exit code 2, nothing registered."""
from pathlib import Path

import pytest
import torch
from cli_harness import REPO, cli_json, load_module, run_cli
from vlforge.catalog import Catalog
from vlforge.components.models.registry import get_family, special_token_ids
from vlforge.components.tokenizer import (
    TokenizerConfig,
    load_tokenizer,
    train_tokenizer,
)

eval_fixtures = load_module("eval_fixtures", REPO / "tests/components/evaluation/eval_fixtures.py")

HEADLINES = {"retrieval": "i2t_r1", "zero_shot_classification": "zs_top1", "linear_probe": "probe_top1",
             "itm": "itm_pair_accuracy", "vqa": "vqa_accuracy", "nlvr": "nlvr_accuracy", "grounding": "grounding_accuracy",
             "nlu_probe": "nlu_accuracy"}


@pytest.mark.slow
def test_eval_suite_and_leaderboard(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: two threads on a busy 2-core machine spin, ~50x slower
    catalog = Catalog(home / "catalog")
    data_dir = eval_fixtures.write_shapes_dataset(tmp_path / "shapes", 40, image_size=32)
    dataset = catalog.register(kind="dataset", name="shapes", files=data_dir, config={"test": True})
    model_dir = tmp_path / "clip"
    train_tokenizer(["a red circle", "a blue square left of a green star"], model_dir,
                    TokenizerConfig(vocab_size=64))
    tokenizer = load_tokenizer(model_dir)
    family = get_family("clip")
    recipe = family.recipe("tiny", eval_fixtures.CLIP_OVERRIDES)
    torch.manual_seed(0)
    family.save(family.build_model(recipe, len(tokenizer), special_token_ids(tokenizer)), model_dir, recipe)
    model = catalog.register(kind="model", name="clip-shapes", family="clip", files=model_dir, parents=[dataset.id],
                             config={"family": "clip", "recipe": "tiny", "values": recipe.model_dump(mode="json")})

    before = sorted(a.id for a in catalog.list())
    proc = run_cli(["run", "eval", "--model", "clip-shapes", "--data", "shapes", "--task", "captioning"], home, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1] == "error: family 'clip' lacks capability generate that task 'captioning' needs", proc.stderr[-2000:]
    assert sorted(a.id for a in catalog.list()) == before

    result = cli_json(["run", "eval", "--model", "clip-shapes", "--data", "shapes", "--suite", "default"], home)
    assert result["tasks"] == sorted(HEADLINES) and set(result["skipped"]) == {"captioning", "vqa_few_shot", "vqav2",
                                                                                "nlvr2", "nlvr2_finetune", "detection"}
    report = catalog.get(result["eval"])
    assert report.parents == [model.id, dataset.id]
    assert {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"} <= set(result["metrics"])
    files = {f.path for f in report.files}
    assert {"report.json", "per_sample/vqa.parquet", "retrieval_examples.png", "vqa_by_type.png"} <= files

    rows = cli_json(["leaderboard", "--publish"], home)
    assert sorted(r["task"] for r in rows) == sorted(HEADLINES)
    for r in rows:
        assert r["family"] == "clip" and r["model"] == "clip-shapes:v1" and r["metric"] == HEADLINES[r["task"]]
        assert r["value"] == pytest.approx(result["metrics"][r["metric"]], abs=1e-6)
        assert r["baseline"] == pytest.approx(result["metrics"]["baseline_" + r["metric"]], abs=1e-6)
        assert r["data"] == "shapes:v1" and r["config"].startswith("tiny@") and r["eval_id"] == report.id
    page = (home / "leaderboard.html").read_text()
    assert page.count("<tr>") == 1 + len(rows) and "data:image/png;base64," in page
