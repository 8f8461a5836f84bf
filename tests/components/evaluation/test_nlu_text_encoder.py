"""The NLU probe's visual-extensions comparison (Iki & Aizawa 2021): a V&L model whose text side started from a
text encoder (``text_init``; back an ``init_from`` chain) is compared with that encoder under the same fine-tuning.
A tiny text-mlm BERT and a vk-transfer student built from it (``text_init``) on the shapes captions: the encoder's
figures are those of the probe run on the encoder itself, the delta is the difference of the headlines, the eval
stage records the encoder in the eval's config and lineage, the leaderboard shows the delta, and the comparison
can be switched off."""
from __future__ import annotations

import shutil
import threading
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from eval_fixtures import (  # noqa: F401  (fixtures)
    TEXT_MLM_OVERRIDES,
    VK_STUDENT_OVERRIDES,
    clip_context,
    one_torch_thread,
    save_untrained,
    shapes_dataset,
)
from vlforge.catalog import Catalog
from vlforge.catalog.web import make_server
from vlforge.components.evaluation import nlu_probe
from vlforge.components.evaluation.leaderboard import leaderboard_rows, render_html
from vlforge.components.evaluation.nlu_probe import DELTA, TextEncoder, find_text_encoder
from vlforge.components.evaluation.options import EvalOptions
from vlforge.components.evaluation.runner import evaluate
from vlforge.components.evaluation.tasks import run_task
from vlforge.components.reproduce import _rebuild, content_hash
from vlforge.components.stages import run_eval


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, shapes_dataset: Path) -> tuple[Path, Path]:
    """(a tiny text-mlm BERT, a vk-transfer student whose BERT starts from it), both with the same tokenizer."""
    captions = pq.read_table(shapes_dataset / "samples.parquet", columns=["caption"]).column("caption").to_pylist()
    root = tmp_path_factory.mktemp("visual-extensions")
    bert = save_untrained("text-mlm", TEXT_MLM_OVERRIDES, captions, root / "bert")
    student = save_untrained("vk-transfer", {**VK_STUDENT_OVERRIDES, "text_init": str(bert)}, captions, root / "student", seed=2)
    return bert, student


def test_the_probe_compares_the_model_with_its_text_encoder(models: tuple[Path, Path], shapes_dataset: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nlu_probe, "EPOCHS", 10)  # 25 training captions: a few more passes, so the two part ways
    bert, student = models
    assert find_text_encoder(student) == TextEncoder(bert, None, "text_init")
    assert find_text_encoder(bert) is None  # no text init: nothing to compare with
    alone = run_task("nlu_probe", clip_context(bert, shapes_dataset)).metrics
    assert DELTA not in alone and not any(k.startswith("nlu_text_encoder_") for k in alone)

    ctx = clip_context(student, shapes_dataset)
    ctx.text_encoder = find_text_encoder(student)
    out = run_task("nlu_probe", ctx)
    m = out.metrics
    assert m["nlu_text_encoder_accuracy"] == alone["nlu_accuracy"]  # the same procedure, seed, tokens, data, head
    assert m[DELTA] == pytest.approx(m["nlu_accuracy"] - alone["nlu_accuracy"])
    # the notes name no folder or id (they differ between catalogs: the report must reproduce byte for byte)
    assert out.notes == {"nlu_text_encoder_via": "text_init", "nlu_text_encoder_family": "text-mlm"}
    own = clip_context(student, shapes_dataset)
    own_metrics = run_task("nlu_probe", own).metrics  # without a text encoder: its own numbers, unchanged
    assert own_metrics == {k: v for k, v in m.items() if k in own_metrics} and DELTA not in own_metrics
    # the student's text features (its pooler's [CLS]) are not the BERT's (mean-pooled): the two probes differ
    assert out.rows["prediction"] != run_task("nlu_probe", clip_context(bert, shapes_dataset)).rows["prediction"]


def test_an_encoder_the_probe_cannot_run_is_a_note(models: tuple[Path, Path], shapes_dataset: Path,
                                                  tmp_path: Path) -> None:
    _, student = models
    teacher = save_untrained("image-teacher", {"image_size": 32}, ["a red circle"], tmp_path / "vit")  # images only
    for encoder, why in ((TextEncoder(teacher), "is a 'image-teacher' model, which the NLU probe cannot run"),
                         (TextEncoder(tmp_path / "gone"), "is not a vlforge model here")):
        ctx = clip_context(student, shapes_dataset)
        ctx.text_encoder = encoder
        out = run_task("nlu_probe", ctx)
        assert why in out.notes["nlu_text_encoder_note"] and "\n" not in out.notes["nlu_text_encoder_note"]
        assert DELTA not in out.metrics and "nlu_accuracy" in out.metrics


def test_an_init_from_chain_leads_back_to_the_text_init(tmp_path: Path) -> None:
    """VL-T5 continued from a VL-T5 that started from a text-t5: the second one's encoder is the text-t5, found
    through the catalog's ids (the saved folders' paths need not exist any more)."""
    t5 = {"max_text_length": 16, "d_model": 32, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2}
    vl = {"image_size": 32, "max_text_length": 16, "region_features": "scratch", "vision_width": 32,
          "vision_layers": 1, "vision_heads": 2}
    catalog = Catalog(tmp_path / "catalog")
    text = save_untrained("text-t5", t5, ["a red circle", "a blue square"], tmp_path / "t5")
    text_art = catalog.register(kind="model", name="t5", family="text-t5", files=text, config={})
    first = save_untrained("vl-t5", {**vl, "text_init": str(catalog.path(text_art.id))}, ["a red circle", "a blue square"],
                       tmp_path / "first")
    first_art = catalog.register(kind="model", name="vlt5-pre", family="vl-t5", files=first,
                                 config={"artifacts": {"text_init": text_art.id}}, parents=[text_art.id])
    second = save_untrained("vl-t5", {**vl, "init_from": str(catalog.path(first_art.id))}, ["a red circle", "a blue square"],
                        tmp_path / "second")
    second_art = catalog.register(kind="model", name="vlt5-ft", family="vl-t5", files=second,
                                  config={"artifacts": {"init_from": first_art.id}}, parents=[first_art.id])
    found = find_text_encoder(catalog.path(second_art.id), catalog, second_art)
    assert found == TextEncoder(catalog.path(text_art.id), text_art.id, "init_from -> text_init")
    assert find_text_encoder(second) == TextEncoder(catalog.path(text_art.id), None, "init_from -> text_init")


def test_the_eval_stage_records_the_encoder_and_the_leaderboard_shows_the_delta(
        models: tuple[Path, Path], shapes_dataset: Path, home: Path, tmp_path: Path) -> None:
    bert, student = models
    catalog = Catalog(home / "catalog")
    data = catalog.register(kind="dataset", name="shapes", files=shapes_dataset, config={})
    enc = catalog.register(kind="model", name="bert-tiny", family="text-mlm", files=bert, config={})
    vl = catalog.register(kind="model", name="vk-tiny", family="vk-transfer", files=student,
                          config={"recipe": "tiny", "artifacts": {"text_init": enc.id}}, parents=[enc.id])
    options = EvalOptions(baseline=False, device="cpu")
    ev = run_eval(vl.id, data.id, ["nlu_probe"], "validation", catalog, None, options).artifact
    direct = evaluate(bert, shapes_dataset, "validation", ["nlu_probe"], tmp_path / "bert-eval", baseline=False)
    assert ev.config["nlu_text_encoder_id"] == enc.id and ev.parents == [vl.id, data.id, enc.id]
    report = (catalog.path(ev.id) / "report.json").read_text()
    assert enc.id not in report and str(catalog.path(enc.id)) not in report  # `vlforge reproduce` compares it
    assert ev.metrics["nlu_text_encoder_accuracy"] == pytest.approx(direct["nlu_accuracy"], abs=1e-6)
    assert ev.metrics[DELTA] == pytest.approx(ev.metrics["nlu_accuracy"] - direct["nlu_accuracy"], abs=2e-6)

    run_eval(enc.id, data.id, ["nlu_probe"], "validation", catalog, None, options)  # the encoder on its own row
    rows = {r["model"]: r for r in leaderboard_rows(catalog)}
    assert rows["vk-tiny:v1"]["text_encoder"] == "bert-tiny:v1"
    assert rows["vk-tiny:v1"]["visual_extension_delta"] == pytest.approx(ev.metrics[DELTA])
    assert rows["bert-tiny:v1"]["text_encoder"] is None and rows["bert-tiny:v1"]["visual_extension_delta"] is None
    page = render_html(list(rows.values()))
    assert "<th>visual_extension_delta</th>" in page and f"{ev.metrics[DELTA]:.4f}" in page
    assert "visual_extension_delta" not in render_html([rows["bert-tiny:v1"]])  # shown only where present
    server = make_server(catalog, "127.0.0.1", 0)  # the catalog browser's /leaderboard page shows it too
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/leaderboard", timeout=30) as r:
            web = r.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    row = web[web.index(f'href="/a/{vl.id}"'):]
    row = row[:row.index("</tr>")]
    assert "<th>visual extension delta</th>" in web and f"<td>bert-tiny:v1</td><td>{ev.metrics[DELTA]:+.4f}</td>" in row

    off = run_eval(vl.id, data.id, ["nlu_probe"], "validation", catalog, None,
                   options.model_copy(update={"text_encoder": False})).artifact
    assert off.id != ev.id and off.config["text_encoder"] is False and "nlu_text_encoder_id" not in off.config
    assert DELTA not in off.metrics and off.parents == [vl.id, data.id]
    assert off.metrics["nlu_accuracy"] == ev.metrics["nlu_accuracy"]

    # `vlforge reproduce` re-runs both evals from their configs in a catalog of its own, where every folder differs
    scratch = Catalog(tmp_path / "scratch")
    same = {a.id: scratch.register(kind=a.kind, name=a.name, family=a.family, files=catalog.path(a.id),
                                   config=a.config, parents=a.parents).id for a in (data, enc, vl)}
    for original in (ev, off):
        rebuilt = _rebuild(original, same, scratch, catalog, None)
        assert rebuilt.metrics == original.metrics and rebuilt.config.get("text_encoder") == original.config.get("text_encoder")
        assert content_hash(rebuilt, scratch) == content_hash(original, catalog)


def test_the_option_keys_only_an_eval_with_the_probe() -> None:
    on, off = EvalOptions(), EvalOptions(text_encoder=False)
    assert off.key_config(10, ["retrieval"]) == on.key_config(10, ["retrieval"])  # the same cached eval
    assert off.key_config(10, ["nlu_probe"]) == on.key_config(10, ["nlu_probe"]) | {"text_encoder": False}


def test_an_encoder_gone_from_the_catalog_is_a_note(models: tuple[Path, Path], shapes_dataset: Path, home: Path,
                                                    tmp_path: Path) -> None:
    """A model whose recorded encoder id is not in this catalog and whose recipe's folder is gone (a catalog it
    was copied from): the eval runs, its config says why the encoder was not compared, and names the folder."""
    bert, _ = models
    gone = tmp_path / "bert"
    shutil.copytree(bert, gone)
    captions = pq.read_table(shapes_dataset / "samples.parquet", columns=["caption"]).column("caption").to_pylist()
    student = save_untrained("vk-transfer", {**VK_STUDENT_OVERRIDES, "text_init": str(gone)}, captions, tmp_path / "student")
    shutil.rmtree(gone)
    catalog = Catalog(home / "catalog")
    data = catalog.register(kind="dataset", name="shapes", files=shapes_dataset, config={})
    vl = catalog.register(kind="model", name="vk-copied", family="vk-transfer", files=student,
                          config={"recipe": "tiny", "artifacts": {"text_init": "ab" * 32}})
    ev = run_eval(vl.id, data.id, ["nlu_probe"], "validation", catalog, None,
                  EvalOptions(baseline=False, device="cpu")).artifact
    assert "is not a vlforge model here" in ev.config["nlu_text_encoder_note"]
    assert ev.config["nlu_text_encoder"] == str(gone) and "nlu_text_encoder_id" not in ev.config
    assert DELTA not in ev.metrics and "nlu_accuracy" in ev.metrics and ev.parents == [vl.id, data.id]
    assert leaderboard_rows(catalog)[0]["visual_extension_delta"] is None
