"""`vlforge run eval`'s options through the real CLI: a templates file without {} and `--device cuda` on a machine
without a GPU are one line and exit code 2 with nothing registered; `--templates FILE --no-baseline` registers a
report without baseline metrics, and the leaderboard still renders it."""
from pathlib import Path

import pytest
import torch
from cli_harness import REPO, cli_json, load_module, run_cli
from vlforge.catalog import Catalog
from vlforge.components.models.registry import get_family, special_token_ids
from vlforge.components.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

eval_fixtures = load_module("eval_fixtures", REPO / "tests/components/evaluation/eval_fixtures.py")


def last_line(proc) -> str:
    return [line for line in proc.stderr.splitlines() if line.strip()][-1]


@pytest.mark.slow
def test_eval_options(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    catalog = Catalog(home / "catalog")
    data_dir = eval_fixtures.write_shapes_dataset(tmp_path / "shapes", 24, image_size=32)
    dataset = catalog.register(kind="dataset", name="shapes", files=data_dir, config={"test": True})
    model_dir = tmp_path / "clip"
    train_tokenizer(["a red circle", "a blue square left of a green star"], model_dir, TokenizerConfig(vocab_size=64))
    tokenizer = load_tokenizer(model_dir)
    family = get_family("clip")
    recipe = family.recipe("tiny", eval_fixtures.CLIP_OVERRIDES)
    torch.manual_seed(0)
    family.save(family.build_model(recipe, len(tokenizer), special_token_ids(tokenizer)), model_dir, recipe)
    catalog.register(kind="model", name="clip-shapes", family="clip", files=model_dir, parents=[dataset.id],
                     config={"family": "clip", "recipe": "tiny", "values": recipe.model_dump(mode="json")})
    base = ["run", "eval", "--model", "clip-shapes", "--data", "shapes", "--task", "zero_shot_classification"]
    before = sorted(a.id for a in catalog.list())

    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a {}\na photo of a thing\n")
    proc = run_cli([*base, "--templates", str(bad)], home, timeout=120)
    assert proc.returncode == 2
    assert last_line(proc) == f"error: {bad} line 2: template 'a photo of a thing' has no {{}} for the class name"
    if not torch.cuda.is_available():
        proc = run_cli([*base, "--device", "cuda"], home, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert last_line(proc).startswith("error: --device 'cuda': torch sees no CUDA GPU")
    assert sorted(a.id for a in catalog.list()) == before

    good = tmp_path / "templates.txt"
    good.write_text("a {} drawn on white\nthe {}\n")
    result = cli_json([*base, "--task", "retrieval", "--templates", str(good), "--no-baseline"], home)
    assert result["baseline"] is False and result["device"] in ("cpu", "cuda:0")
    assert "zs_top1" in result["metrics"] and not [k for k in result["metrics"] if k.startswith("baseline_")]
    assert catalog.get(result["eval"]).config["templates"] == ["a {} drawn on white", "the {}"]
    rows = cli_json(["leaderboard"], home)
    assert sorted(r["task"] for r in rows) == ["retrieval", "zero_shot_classification"]
    assert all(r["baseline"] is None and r["eval_id"] == result["eval"] for r in rows)


@pytest.mark.slow
def test_nlu_probe_against_the_text_encoder(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A vk-transfer student whose BERT started from a catalog text-mlm: `run eval --task nlu_probe` reports the
    encoder's accuracy and the delta, the leaderboard's table shows them; `--no-text-encoder` skips the encoder
    and is a different eval."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("COLUMNS", "400")  # the leaderboard's table, unwrapped
    catalog = Catalog(home / "catalog")
    data_dir = eval_fixtures.write_shapes_dataset(tmp_path / "shapes", 24, image_size=32)
    dataset = catalog.register(kind="dataset", name="shapes", files=data_dir, config={"test": True})
    captions = ["a red circle", "a blue square left of a green star"]
    bert = eval_fixtures.save_untrained("text-mlm", eval_fixtures.TEXT_MLM_OVERRIDES, captions, tmp_path / "bert")
    enc = catalog.register(kind="model", name="bert-tiny", family="text-mlm", files=bert, config={})
    student = eval_fixtures.save_untrained("vk-transfer", {**eval_fixtures.VK_STUDENT_OVERRIDES,
                                           "text_init": str(catalog.path(enc.id))}, captions, tmp_path / "vk", seed=2)
    catalog.register(kind="model", name="vk-tiny", family="vk-transfer", files=student, parents=[enc.id],
                     config={"recipe": "tiny", "artifacts": {"text_init": enc.id}})
    base = ["run", "eval", "--model", "vk-tiny", "--data", "shapes", "--task", "nlu_probe", "--no-baseline"]

    result = cli_json(base, home)
    m = result["metrics"]
    assert m["nlu_visual_extension_delta"] == pytest.approx(m["nlu_accuracy"] - m["nlu_text_encoder_accuracy"],
                                                            abs=2e-6)
    assert catalog.get(result["eval"]).config["nlu_text_encoder_id"] == enc.id
    proc = run_cli(["leaderboard"], home, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "visual_extension_delta" in proc.stdout and "bert-tiny:v1" in proc.stdout
    assert f"{m['nlu_visual_extension_delta']:+.4f}" in proc.stdout

    off = cli_json([*base, "--no-text-encoder"], home)
    assert off["eval"] != result["eval"] and catalog.get(off["eval"]).config["text_encoder"] is False
    assert not [k for k in off["metrics"] if "text_encoder" in k or "visual_extension" in k]
    assert off["metrics"]["nlu_accuracy"] == m["nlu_accuracy"]
