"""The shared training loop: any registered family, any catalog dataset, trained with Ray Train.

``train(...)`` launches a ``TorchTrainer`` (gloo on CPU, NCCL with ``use_gpu``) whose workers each build the
family's model with the same seed, stream their part of the training shards through the training loader
(``components/data/loader.py``: ``recipe.loader_workers`` DataLoader processes decode and resize off the training
process; a sample whose image does not decode is skipped and counted in the log's ``skipped_images``),
run the family's objective under optional bf16 autocast, log every ``log_every`` steps (rank 0 also sends each log
row to the driver's progress bar: ``progress.py``), and every ``checkpoint_every`` steps (and at the last) report
to Ray Train a checkpoint: the model's ``save_pretrained`` directory, the tokenizer, the optimiser/scheduler state
and the training log. The workers replicate the model (DDP) or, with ``parallel: fsdp``, shard it (FSDP2: ``fsdp.py``;
the same checkpoint, its optimiser state keyed by parameter name). A run restarted with the same ``run_dir`` resumes
from its last checkpoint and ends with the same weights an uninterrupted run would have (CPU, same seed). With
``eval_every`` rank 0 adds the validation metrics (``validation.py``) to the log rows of those steps; with ``tracking``
it logs the recipe and every log row to MLflow/TensorBoard (``tracking.py``)."""
from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from vlforge.components.data.loader import (
    DataMix,
    split_shards,
    training_loader,
)
from vlforge.components.models.registry import (
    Family,
    ImageTextBatch,
    Recipe,
    apply_freeze,
    unwrap,
    get_family,
    special_token_ids,
)
from vlforge.components.models.common.checkpointing import enable_grad_checkpointing
from vlforge.components.models.common.preflight import check_shardable, require_shardable
from vlforge.components.tokenizer import copy_tokenizer, load_tokenizer
from vlforge.components.training.accumulation import accumulate_gradients
from vlforge.components.training.fsdp import Sharding, clip_grad_norm, sync_replicated_grads
from vlforge.components.training.progress import TrainingProgress, publish
from vlforge.components.training.tracking import Tracker
from vlforge.components.training.validation import Validator
from vlforge.errors import UserError

TRAIN_STATE = "train_state.pt"
TRAIN_LOG = "train_log.jsonl"


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, embeddings' scalars and the temperature (open_clip's rule). Under FSDP the
    sharded (DTensor) and replicated parameters go in separate groups: one fused kernel call takes one kind."""
    from torch.distributed.tensor import DTensor

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if not any(isinstance(p, DTensor) for g in groups for p in g["params"]):
        return groups
    return [{**g, "params": part} for g in groups for sharded in (True, False)
            if (part := [p for p in g["params"] if isinstance(p, DTensor) == sharded])]


def make_optimizer(model: torch.nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.AdamW:
    """AdamW (0.9, 0.98, 1e-6) over ``_param_groups``, with the fused kernel where the device has one: it updates
    every tensor in one pass, 6-7x faster than the per-tensor loop on the CPU."""
    groups = _param_groups(model, recipe.weight_decay)
    fused = device.type in ("cpu", "cuda") and all(p.dtype.is_floating_point for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6, fused=fused or None)


def _lr_lambda(recipe: Recipe):
    """The learning rate of each step as a factor of ``recipe.lr`` (open_clip's schedules): linear warmup over
    ``warmup_steps``, then ``cosine`` decay to 0 at ``steps``, ``const``, or ``const-cooldown``: constant, then
    over the last ``cooldown_steps`` linear from lr to ``lr_cooldown_end``."""
    def f(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / max(1, recipe.warmup_steps)
        if recipe.lr_scheduler == "const":
            return 1.0
        if recipe.lr_scheduler == "const-cooldown":
            start = recipe.steps - recipe.cooldown_steps
            if step < start:
                return 1.0
            progress = min(1.0, (step - start) / max(1, recipe.cooldown_steps))
            return 1.0 + progress * (recipe.lr_cooldown_end / recipe.lr - 1.0)
        progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def check_scale_fields(family: Family, recipe: Recipe, train_samples: int | None, resolved: bool = True) -> None:
    """Plan-time checks of the training-at-scale fields (precision, accum_freq, local_loss, parallel, the lr
    schedule): one-line UserErrors before anything runs or is registered. ``resolved=False``: the recipe's artifact
    fields may still be ``catalog:REF`` (the CLI's check before any stage), so fsdp's model check waits."""
    if recipe.precision == "fp16" and not (recipe.use_gpu and torch.cuda.is_available()):
        raise UserError("recipe field 'precision': fp16 needs a GPU (use_gpu: true on a machine with CUDA); "
                        "use bf16 or fp32 on CPU")
    if recipe.local_loss and not family.supports_local_loss:
        raise UserError(f"recipe field 'local_loss': family '{family.name}' has no gathered contrastive loss")
    if recipe.accum_freq > 1:
        if family.batch_coupled_loss and type(family).features is Family.features:
            raise UserError(f"recipe field 'accum_freq': family '{family.name}' contrasts samples across the batch "
                            "and has no feature cache (GradCache); accum_freq must be 1")
        step_samples = recipe.batch_size * recipe.accum_freq
        if train_samples is not None and step_samples > train_samples:
            raise UserError(f"recipe field 'accum_freq': batch_size x accum_freq = {step_samples} samples per step, "
                            f"more than the {train_samples} of the training split (samples would repeat in a step)")
    if recipe.parallel == "fsdp":
        check_shardable(family, recipe, build=resolved)
    if recipe.lr_scheduler == "const-cooldown" and not 0 < recipe.cooldown_steps <= recipe.steps - recipe.warmup_steps:
        raise UserError(f"recipe field 'cooldown_steps': const-cooldown needs 1 to steps - warmup_steps = "
                        f"{recipe.steps - recipe.warmup_steps} cooldown steps (got {recipe.cooldown_steps})")


def optimizer_step(family: Family, model: torch.nn.Module, batches: Sequence[ImageTextBatch], recipe: Recipe,
                   optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler, autocast: Any,
                   sharded: bool = False) -> dict[str, torch.Tensor]:
    """One optimiser step over ``recipe.accum_freq`` micro-batches (``batches``); returns the losses. ``sharded``:
    ``model`` is ``fsdp.Sharding``'s root and ``family`` its ``ShardedFamily``."""
    optimizer.zero_grad(set_to_none=True)
    if len(batches) == 1:
        with autocast:
            losses = family.training_step(model, batches[0], recipe)
        scaler.scale(losses["loss"]).backward()
    else:
        losses = accumulate_gradients(family, model, batches, recipe, autocast, lambda loss: scaler.scale(loss).backward())
    if sharded:
        sync_replicated_grads(model)
    if recipe.grad_clip > 0:
        scaler.unscale_(optimizer)
        if sharded:
            clip_grad_norm(model, recipe.grad_clip)
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    family.after_optimizer_step(model, recipe)
    return losses


def word_id_tensor(enc: Any, n: int) -> torch.Tensor:
    """The fast tokenizer's word index of every token (-1 for special tokens and padding), for whole-word masking."""
    return torch.tensor([[-1 if w is None else w for w in enc.word_ids(i)] for i in range(n)], dtype=torch.long)


def _worker_nodes(world: int) -> list[str]:
    """The node IP of every rank (rank order), so a run records which machines took part."""
    import ray.util

    ip = ray.util.get_node_ip_address()
    if world == 1:
        return [ip]
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, ip)
    return [str(x) for x in gathered]


def train_worker(cfg: dict[str, Any]) -> None:
    """Runs inside each Ray Train worker. Rank 0 tracks the run (``tracking.py``: the recipe as parameters, every log
    row as metrics) and closes it FAILED if training raises; on the other ranks the tracker does nothing."""
    import ray.train

    tracking = cfg.get("tracking") or {}
    rank0 = ray.train.get_context().get_world_rank() == 0
    tracker = Tracker(cfg["recipe"].get("tracking", []) if rank0 else [], tracking.get("run_name", "run"),
                      uri=tracking.get("mlflow_uri"),
                      log_dir=Path(tracking["tensorboard_dir"]) if tracking.get("tensorboard_dir") else None)
    try:
        tracker.log_params({"family": cfg["family"], **cfg["recipe"]})
        _train_worker(cfg, tracker)
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.close()


def _train_worker(cfg: dict[str, Any], tracker: Tracker) -> None:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    family = get_family(cfg["family"])
    recipe = family.validate_recipe(cfg["recipe"], "recipe")
    torch.set_num_threads(recipe.threads_per_worker)
    torch.manual_seed(recipe.seed)
    tokenizer = load_tokenizer(cfg["tokenizer_dir"])
    model = family.build_model(recipe, len(tokenizer), special_token_ids(tokenizer))
    param_counts = apply_freeze(family, model, recipe)
    if recipe.grad_checkpointing:
        enable_grad_checkpointing(model)
    nodes = _worker_nodes(world)
    start_step, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    opt_state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resumed = family.load(Path(d))
            model.load_state_dict(resumed.state_dict())
            opt_state = torch.load(Path(d) / TRAIN_STATE, weights_only=False)
            start_step = opt_state["step"]
            history = [json.loads(line) for line in (Path(d) / TRAIN_LOG).read_text().splitlines() if line]
    device = ray.train.torch.get_device()
    sharding, step_family = None, family
    if recipe.parallel == "fsdp":  # sharded on every world size (one worker: a 1-rank group)
        require_shardable(family, model)
        sharding = Sharding(model, device, keep_copy=rank == 0)
        model, step_family = sharding.root, sharding.family(family)
    elif world > 1:
        model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": False})
    else:
        model = model.to(device)
    optimizer = make_optimizer(model, recipe, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(recipe))
    if opt_state is not None:
        if sharding is not None:
            sharding.load_optimizer_state(optimizer, opt_state["optimizer"])
        else:
            optimizer.load_state_dict(opt_state["optimizer"])
        scheduler.load_state_dict(opt_state["scheduler"])

    per_worker = max(1, recipe.batch_size // world)
    transform = family.image_transform(recipe)
    validator = Validator(family, recipe, tokenizer, Path(cfg["dataset_dir"]), device, per_worker) \
        if rank == 0 and recipe.eval_every > 0 else None
    # deterministic resume: the loader skips, undecoded, the samples of the steps already taken
    data = DataMix.of(cfg["train_mix"]) if cfg.get("train_mix") else [Path(p) for p in cfg["train_shards"]]
    batches = iter(training_loader(data, rank=rank, world=world, seed=recipe.seed,
                                   shuffle_buffer=recipe.shuffle_buffer, transform=transform, batch_size=per_worker,
                                   num_workers=recipe.loader_workers, start_step=start_step * recipe.accum_freq,
                                   resample=recipe.resampled, epoch_samples=recipe.train_num_samples))
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(recipe.precision)
    autocast = torch.autocast(device_type=device.type, dtype=half or torch.float32, enabled=half is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=recipe.precision == "fp16")
    if opt_state is not None and "scaler" in opt_state:
        scaler.load_state_dict(opt_state["scaler"])

    skipped_images = history[-1].get("skipped_images", 0) if history else 0
    model.train()
    window_start, window_samples = time.perf_counter(), 0
    def micro_batch(step: int) -> ImageTextBatch:
        nonlocal skipped_images
        decoded = next(batches)
        skipped_images += decoded.skipped
        captions = decoded.captions
        enc = tokenizer(captions, padding="max_length", truncation=True, max_length=recipe.max_text_length, return_tensors="pt")
        return ImageTextBatch(
            pixel_values=decoded.pixel_values.to(device),
            input_ids=enc["input_ids"].to(device),
            attention_mask=enc["attention_mask"].to(device),
            captions=captions,
            keys=decoded.keys,
            word_ids=word_id_tensor(enc, len(captions)).to(device),
            meta=decoded.meta,
            step=step,
            tokenizer=tokenizer,
            max_text_length=recipe.max_text_length,
        )

    for step in range(start_step, recipe.steps):
        losses = optimizer_step(step_family, model, [micro_batch(step) for _ in range(recipe.accum_freq)], recipe, optimizer,
                                scheduler, scaler, autocast, sharded=sharding is not None)
        window_samples += per_worker * world * recipe.accum_freq
        done = step + 1
        evaluate = recipe.eval_every > 0 and (done % recipe.eval_every == 0 or done == recipe.steps)
        save = done % recipe.checkpoint_every == 0 or done == recipe.steps
        if done % recipe.log_every == 0 or done == recipe.steps or save or evaluate:
            elapsed = time.perf_counter() - window_start
            # the family's own, unsharded model on rank 0 (under fsdp: the copy the full state is gathered into)
            core = sharding.gather() if sharding is not None and (evaluate or save) else unwrap(model)
            row = {"step": done, "lr": scheduler.get_last_lr()[0], "samples_per_s": window_samples / max(elapsed, 1e-9),
                   **param_counts, "worker_nodes": nodes, "skipped_images": skipped_images}
            row.update({k: float(v.detach().float()) for k, v in losses.items()})
            if validator is not None and evaluate:
                # after the window's elapsed time and before its reset: validation counts in no throughput
                row.update(validator(core.to(device), done))
                if sharding is not None:
                    core.cpu()
            history.append(row)
            if rank == 0:
                publish(cfg.get("progress_queue"), row)
                tracker.log_metrics(done, row)
            window_start, window_samples = time.perf_counter(), 0
            if save:
                gathered = sharding.optimizer_state(optimizer) if sharding is not None else None  # all ranks
                with tempfile.TemporaryDirectory() as tmp:
                    ckpt_dir = Path(tmp)
                    if rank == 0:
                        family.save(core, ckpt_dir, recipe)
                        copy_tokenizer(Path(cfg["tokenizer_dir"]), ckpt_dir)
                        torch.save({"step": done, "optimizer": optimizer.state_dict() if gathered is None else gathered, "scheduler": scheduler.state_dict(),
                                    "scaler": scaler.state_dict()}, ckpt_dir / TRAIN_STATE)
                        (ckpt_dir / TRAIN_LOG).write_text("".join(json.dumps(h) + "\n" for h in history))
                        ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(ckpt_dir))
                    else:
                        ray.train.report(row)
            # Rows between checkpoints stay in ``history`` (written with the next checkpoint) and are not reported:
            # Ray Train keeps one unread report per worker and collects every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S
            # (vlforge: 0.25 s, Ray: 2 s), so a report every few steps would cap a fast loop at one window per poll.


def train(
    *,
    family_name: str,
    recipe: Recipe,
    dataset_dir: Path,
    tokenizer_dir: Path,
    run_dir: Path,
    out_dir: Path,
    ray_address: str | None = None,
    storage: str | None = None,
    data_mix: Sequence[tuple[Path, float]] = (),
) -> dict[str, Any]:
    """Train and copy the final checkpoint (without optimiser state) to ``out_dir``. Checkpoints go to ``run_dir``,
    or with ``storage`` (else ``$VLFORGE_RAY_STORAGE``; e.g. ``s3://bucket/prefix``) to ``<storage>/<run_dir.name>``.
    Re-running with the same run resumes from its last checkpoint. Returns a summary: steps, final losses,
    samples/s, wall time. ``data_mix``: (dataset folder, weight) pairs to train on instead of ``dataset_dir``'s
    training split alone (``loader.DataMix``); validation stays on ``dataset_dir``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from vlforge.components.training.checkpoint_storage import copy_checkpoint, resolve_run_storage
    from vlforge.components.training.ray_runtime import ensure_ray, train_logging_config
    from vlforge.components.training.tracking import mlflow_uri, tensorboard_dir

    run_storage = resolve_run_storage(storage, run_dir)
    ensure_ray(ray_address)
    shards = [str(p) for p in split_shards(dataset_dir, "train")]
    mix = [([str(p) for p in split_shards(d, "train")], float(w)) for d, w in data_mix]
    start = time.perf_counter()
    with TrainingProgress(recipe.steps, family_name) as progress:
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={
                "family": family_name,
                "recipe": recipe.model_dump(mode="json"),
                "train_shards": shards,
                **({"train_mix": mix} if mix else {}),
                "tokenizer_dir": str(tokenizer_dir),
                "dataset_dir": str(dataset_dir),
                # resolved here: a worker's environment and working folder may differ from the driver's
                "tracking": {"run_name": run_dir.name, "mlflow_uri": mlflow_uri(),
                             "tensorboard_dir": str(tensorboard_dir(run_dir.name))},
                "progress_queue": progress.queue,
            },
            torch_config=TorchConfig(backend="nccl" if recipe.use_gpu else "gloo"),
            scaling_config=ScalingConfig(
                num_workers=recipe.num_workers, use_gpu=recipe.use_gpu, resources_per_worker={"CPU": recipe.threads_per_worker}
            ),
            run_config=RunConfig(
                name=run_dir.name,
                storage_path=run_storage.storage_path,
                storage_filesystem=run_storage.filesystem,
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                failure_config=FailureConfig(max_failures=2),
                **train_logging_config(),  # Ray Train's reports and checkpoint lines: errors only unless verbose
            ),
        )
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run '{run_storage.run_url}' finished without a checkpoint")
    copy_checkpoint(result.checkpoint, out_dir, exclude=[TRAIN_STATE])
    history = [json.loads(line) for line in (out_dir / TRAIN_LOG).read_text().splitlines() if line]
    last = history[-1]
    speeds = [h["samples_per_s"] for h in history[1:]] or [last["samples_per_s"]]
    return {
        "steps": last["step"],
        "final_loss": last["loss"],
        "first_loss": history[0]["loss"],
        "samples_per_s": sorted(speeds)[len(speeds) // 2],
        "wall_time_s": time.perf_counter() - start,
        "trainable_params": last.get("trainable_params", 0),
        "total_params": last.get("total_params", 0),
        "worker_nodes": sorted(set(last.get("worker_nodes", []))),
    }
