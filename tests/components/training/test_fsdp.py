"""``parallel: fsdp`` (``components/training/fsdp.py``): on two gloo processes one optimiser step of the tiny CLIP
model (plain, with accum_freq 2 through GradCache, with grad_checkpointing) gives DDP's loss and updated parameters;
a resumed run (gathered model and optimiser state, loaded into fresh shards) continues as an uninterrupted one; an
attached teacher is neither sharded nor trained. Through the Ray Train loop: DDP's checkpoint format and weights,
and a resumed run ends as a straight one. Bad input (fsdp on a family that cannot shard, also through the CLI: exit
2, nothing registered) is a one-line UserError."""
from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path

import pytest
import torch
from test_scale import assert_same, batch, build, split
from torch.distributed.tensor import DTensor
from vlforge.components.models.common.checkpointing import enable_grad_checkpointing
from vlforge.components.models.common.preflight import check_shardable
from vlforge.components.models.registry import Family, get_family, read_family_file, unwrap
from vlforge.components.models.teachers import attach_teacher, attached_teacher
from vlforge.components.training.fsdp import Sharding
from vlforge.components.training.loop import _lr_lambda, check_scale_fields, make_optimizer, optimizer_step
from vlforge.errors import UserError

CPU = torch.device("cpu")
# one optimiser step, DDP against FSDP: plain, GradCache over 2 micro-batches, checkpointed layers
CASES = {"plain": {}, "accum": {"accum_freq": 2}, "checkpointed": {"grad_checkpointing": True}}
WORKERS = 1  # Ray Train workers of the loop runs (two cost minutes on two cores; the unit test covers two ranks)


def _steps(family, model, recipe, rank: int, steps: range, sharding: Sharding | None = None, state=None):
    """``steps`` optimiser steps of ``model`` (DDP-wrapped, or sharded by ``sharding``) on rank ``rank``'s half of
    each step's batch of 8; returns the last losses, the optimiser and the scheduler."""
    optimizer = make_optimizer(model, recipe, CPU)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(recipe))
    if state is not None:
        sharding.load_optimizer_state(optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step_family = sharding.family(family) if sharding else family
    for step in steps:
        mine = split(batch(recipe, 8, seed=step), 2)[rank]
        micro = split(mine, recipe.accum_freq) if recipe.accum_freq > 1 else [mine]
        losses = optimizer_step(step_family, model, micro, recipe, optimizer, scheduler, scaler,
                                contextlib.nullcontext(), sharded=sharding is not None)
    return losses, optimizer, scheduler


def _fsdp_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    results: dict = {}
    for case, overrides in CASES.items():
        family, recipe, ddp_model = build("clip", warmup_steps=0, **overrides)
        if recipe.grad_checkpointing:
            enable_grad_checkpointing(ddp_model)
        ddp_loss = _steps(family, torch.nn.parallel.DistributedDataParallel(ddp_model), recipe, rank, range(1))[0]
        family, recipe, model = build("clip", warmup_steps=0, **overrides)
        if recipe.grad_checkpointing:  # before sharding, as the loop does: FSDP gathers again in the recomputation
            enable_grad_checkpointing(model)
        teacher = build("clip")[2]
        attach_teacher(model, "teacher", teacher)
        before = {n: p.clone() for n, p in teacher.named_parameters()}
        sharding = Sharding(model, CPU, keep_copy=rank == 0)
        assert any(isinstance(p, DTensor) for p in sharding.root.parameters())
        fsdp_loss = _steps(family, sharding.root, recipe, rank, range(1), sharding)[0]
        assert attached_teacher(unwrap(sharding.root), "teacher")[1] is teacher
        assert not any(isinstance(p, DTensor) or p.requires_grad for p in teacher.parameters())
        assert all(torch.equal(p, before[n]) for n, p in teacher.named_parameters())
        copy = sharding.gather()
        if rank == 0:
            assert attached_teacher(copy, "teacher")[1] is teacher  # the copy shares the teacher, not a copy of it
            assert not any(isinstance(p, DTensor) for p in copy.parameters())
            results[case] = {"ddp_loss": float(ddp_loss["loss"].detach()), "fsdp_loss": float(fsdp_loss["loss"].detach()),
                              "ddp": dict(ddp_model.state_dict()), "fsdp": dict(copy.state_dict()),
                              "start": dict(build("clip")[2].state_dict())}
    # resume: 2 steps straight == 1 step, gathered state saved and loaded into a fresh sharded model, 1 more step
    family, recipe, model = build("clip", warmup_steps=1, steps=2)
    straight = Sharding(model, CPU, keep_copy=rank == 0)
    _steps(family, straight.root, recipe, rank, range(2), straight)
    family, recipe, model = build("clip", warmup_steps=1, steps=2)
    first = Sharding(model, CPU, keep_copy=rank == 0)
    _, optimizer, scheduler = _steps(family, first.root, recipe, rank, range(1), first)
    saved = {"optimizer": first.optimizer_state(optimizer), "scheduler": scheduler.state_dict()}
    weights = first.gather()
    payload = [{"model": weights.state_dict(), **saved} if rank == 0 else None]
    dist.broadcast_object_list(payload, src=0)  # what every worker reads back from the checkpoint
    family, recipe, fresh = build("clip", warmup_steps=1, steps=2)
    fresh.load_state_dict(payload[0]["model"])
    resumed = Sharding(fresh, CPU, keep_copy=rank == 0)
    _steps(family, resumed.root, recipe, rank, range(1, 2), resumed, payload[0])
    a, b = straight.gather(), resumed.gather()
    if rank == 0:
        results["resume"] = {"straight": dict(a.state_dict()), "resumed": dict(b.state_dict()),
                             "first": payload[0]["model"]}
        torch.save(results, out)
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: 57-80 s on two busy cores
@pytest.mark.timeout(180)
def test_fsdp_step_equals_ddp_and_resumes_exactly_on_two_gloo_processes(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_fsdp_worker, args=(port, str(tmp_path / "rank0.pt")), nprocs=2)
    results = torch.load(tmp_path / "rank0.pt")
    for case in CASES:
        r = results[case]
        assert abs(r["fsdp_loss"] - r["ddp_loss"]) < 1e-5
        assert_same(r["fsdp"], r["ddp"])
        # the step moved the weights (the comparison has teeth): every trained matrix changed
        assert all(not torch.equal(r["fsdp"][k], v) for k, v in r["start"].items() if v.ndim == 2 and "position_ids" not in k)
    resume = results["resume"]
    assert_same(resume["resumed"], resume["straight"], atol=1e-6)
    assert any(not torch.equal(resume["first"][k], resume["straight"][k]) for k in resume["first"])


class _NoLayers(Family):
    """A family whose model is one linear map: nothing for fsdp to shard per layer."""

    name, paper = "no-layers", "-"

    def build_model(self, recipe, vocab_size, special_ids):
        return torch.nn.Linear(4, 4)

    def training_step(self, model, batch, recipe):
        return {"loss": model(batch.pixel_values.flatten(1)[:, :4]).sum()}

    def load(self, model_dir):
        raise NotImplementedError


def test_bad_parallel_fields_are_one_line_user_errors() -> None:
    clip = get_family("clip")
    check_scale_fields(clip, clip.recipe("tiny", {"parallel": "fsdp"}), None)  # clip's layers shard
    cases = [
        (lambda: check_scale_fields(_NoLayers(), clip.recipe("tiny", {"parallel": "fsdp"}), None),
         "family 'no-layers' has no transformer layers to shard with fsdp"),
        (lambda: check_shardable(clip, clip.recipe("tiny", {"parallel": "fsdp", "precision": "fp16"})),
         "fsdp trains in fp32 or bf16, not fp16"),
        (lambda: clip.recipe("tiny", {"parallel": "zero3"}), "field 'parallel'"),
    ]
    # families whose step reads parameters outside their layers' forward (found by running them sharded)
    for name in ("unit", "unified"):
        family = get_family(name)
        cases.append((lambda family=family: check_scale_fields(family, family.recipe("tiny", {"parallel": "fsdp"}), None),
                      f"family '{name}' cannot shard with fsdp: .+ \\(use parallel: ddp\\)$"))
    for call, message in cases:
        with pytest.raises(UserError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


def test_fsdp_on_a_family_that_cannot_shard_exits_2_through_the_cli_and_registers_nothing(home: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from cli_harness import run_cli
    from vlforge.catalog import Catalog

    catalog = Catalog(home / "catalog")
    data = home / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"format": "webdataset", "splits": {
        "train": {"samples": 8, "shards": ["train-0.tar"]}, "validation": {"samples": 0, "shards": []}}}))
    pq.write_table(pa.table({"key": [str(i) for i in range(8)], "caption": ["a red circle"] * 8,
                             "label": ["circle", "square"] * 4, "split": ["train"] * 8}), data / "samples.parquet")
    dataset = catalog.register(kind="dataset", name="d", files=data, config={}).id
    before = sorted(art.id for art in catalog.list())
    # the check comes before any flow (else the tokenizer would train first): no Prefect server is needed
    proc = run_cli(["run", "train", "--family", "unit", "--data", dataset, "--set", "parallel=fsdp"], home,
                   timeout=120, embedded=True)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "recipe field 'parallel': family 'unit' cannot shard with fsdp" in lines[0], lines[0]
    assert sorted(art.id for art in catalog.list()) == before


TRAIN_SCRIPT = """
import json, sys
from pathlib import Path
from vlforge.components.models.registry import get_family
from vlforge.components.training.loop import train
a = json.loads(sys.argv[1])
for run in a["runs"]:  # one process: one Ray session for every run
    recipe = get_family("clip").recipe("tiny", {**a["recipe"], **run["recipe"]})
    train(family_name="clip", recipe=recipe, dataset_dir=Path(a["data"]), tokenizer_dir=Path(a["tok"]),
          run_dir=Path(run["run"]), out_dir=Path(run["out"]))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fsdp_through_the_ray_loop_resumes_and_saves_ddps_checkpoint(home: Path, tmp_path: Path) -> None:
    """The Ray Train loop (one worker, a 1-rank FSDP group) with ``parallel: fsdp``, stopped at step 2 and continued
    to 4 on the same run folder (its checkpoint: gathered weights, optimiser state by parameter name), validating
    the gathered model at steps 2 and 4: it ends with a straight DDP run's weights (within float rounding) in the same
    model directory (the same files, a ``save_pretrained`` checkpoint the family's ``load`` reads)."""
    import subprocess
    import sys

    from safetensors.torch import load_file
    from vlforge.catalog import Catalog
    from vlforge.components.data.crawl import CrawlConfig
    from vlforge.components.data.shard import ShardConfig
    from vlforge.components.pipeline_config import SourceConfig
    from vlforge.components.stages import run_ingest, run_tokenizer
    from vlforge.components.tokenizer import TokenizerConfig

    catalog = Catalog(home / "catalog")
    data = run_ingest(SourceConfig(spec="builtin:shapes?n=40&image_size=32"), CrawlConfig(image_size=32, processes=1),
                      ShardConfig(samples_per_shard=20), catalog).artifact
    tok = run_tokenizer(data.id, TokenizerConfig(vocab_size=128), catalog).artifact
    # const lr: the resumed run's longer `steps` leaves the schedule of steps 1-2 as it was
    recipe = {"num_workers": WORKERS, "batch_size": 8, "image_size": 32, "patch_size": 8, "vision_layers": 1,
              "text_layers": 1, "warmup_steps": 1, "lr_scheduler": "const", "checkpoint_every": 2, "log_every": 1,
              "shuffle_buffer": 8, "steps": 4}
    fsdp = {"parallel": "fsdp", "eval_every": 2}
    runs = {"ddp": {}, "first": {**fsdp, "steps": 2}, "resumed": fsdp}
    args = {"data": str(catalog.path(data.id)), "tok": str(catalog.path(tok.id)), "recipe": recipe,
            "runs": [{"recipe": r, "run": str(tmp_path / "runs" / ("resumed" if name == "first" else name)),
                      "out": str(tmp_path / name)} for name, r in runs.items()]}
    proc = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, json.dumps(args)], capture_output=True, text=True,
                          timeout=580)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {name: tmp_path / name for name in runs}
    assert sorted(p.name for p in out["resumed"].iterdir()) == sorted(p.name for p in out["ddp"].iterdir())
    family, saved = read_family_file(out["resumed"])
    assert saved.parallel == "fsdp"
    assert not any(isinstance(p, DTensor) for p in family.load(out["resumed"]).parameters())
    weights = {name: load_file(out[name] / "model.safetensors") for name in runs}
    assert_same(weights["resumed"], weights["ddp"])
    assert any(not torch.equal(weights["first"][k], weights["resumed"][k]) for k in weights["first"])
    log = {name: [json.loads(line) for line in (out[name] / "train_log.jsonl").read_text().splitlines()] for name in runs}
    assert [row["step"] for row in log["resumed"]] == [1, 2, 3, 4]
    assert log["resumed"][:2] == log["first"]  # resumed, not retrained: steps 1-2 are the first run's own rows
    assert all(abs(a["loss"] - b["loss"]) < 1e-5 for a, b in zip(log["resumed"], log["ddp"], strict=True))
    assert "val_loss" in log["resumed"][1] and "val_loss" in log["resumed"][3]
