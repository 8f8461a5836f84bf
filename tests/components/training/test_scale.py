"""Training at scale, component level (no Ray): accum_freq (GradCache for CLIP, plain accumulation for GPT-2), the
local contrastive loss on two gloo processes, activation checkpointing, the lr schedules and the plan-time errors."""
from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import torch
from vlforge.components.models.registry import ImageTextBatch, get_family
from vlforge.components.training.accumulation import accumulate_gradients
from vlforge.components.training.loop import _lr_lambda, check_scale_fields
from vlforge.errors import UserError

SPECIALS = {"pad": 0, "unk": 1, "mask": 2, "bos": 3, "eos": 4}
VOCAB = 64
SMALL = {"clip": {"image_size": 32, "patch_size": 8, "embed_dim": 32, "vision_width": 32, "vision_layers": 2,
                  "vision_heads": 2, "text_width": 32, "text_layers": 2, "text_heads": 2, "max_text_length": 12,
                  "vocab_size": VOCAB},
         "text-lm": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "dropout": 0.0, "max_text_length": 12,
                     "vocab_size": VOCAB},
         "vlmo": {"image_size": 32, "max_text_length": 12, "vocab_size": VOCAB}}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, **overrides):
    family = get_family(name)
    recipe = family.recipe("tiny", {**SMALL[name], **overrides})
    torch.manual_seed(0)
    return family, recipe, family.build_model(recipe, VOCAB, SPECIALS)


def batch(recipe, n: int, seed: int = 0) -> ImageTextBatch:
    """``n`` samples of random pixels and full-length token rows ending in [EOS] (no padding: every sample has the
    same number of tokens, so a per-token mean is a per-sample mean)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n, recipe.max_text_length), generator=g)
    ids[:, 0], ids[:, -1] = SPECIALS["bos"], SPECIALS["eos"]
    return ImageTextBatch(torch.randn(n, 3, recipe.image_size, recipe.image_size, generator=g), ids,
                          torch.ones_like(ids), [f"c{i}" for i in range(n)], [f"{seed}-{i:04d}" for i in range(n)],
                          word_ids=torch.arange(recipe.max_text_length).expand(n, -1).clone(), step=0,
                          max_text_length=recipe.max_text_length)


def split(b: ImageTextBatch, k: int) -> list[ImageTextBatch]:
    m = len(b.keys) // k
    return [ImageTextBatch(b.pixel_values[i * m:(i + 1) * m], b.input_ids[i * m:(i + 1) * m],
                           b.attention_mask[i * m:(i + 1) * m], b.captions[i * m:(i + 1) * m], b.keys[i * m:(i + 1) * m],
                           word_ids=b.word_ids[i * m:(i + 1) * m], step=0, max_text_length=b.max_text_length)
            for i in range(k)]


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def full_batch_grads(family, model, recipe, b) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = family.training_step(model, b, recipe)["loss"]
    loss.backward()
    return float(loss.detach()), grads(model)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=0), (name, (a[name] - b[name]).abs().max())


@pytest.mark.parametrize("name", ["clip", "text-lm"])
def test_accumulated_gradients_equal_one_batch_of_batch_size_times_k(name: str) -> None:
    """CLIP through GradCache (its contrastive loss couples the micro-batches: plain summing would differ) and
    GPT-2 through plain accumulation: 4 micro-batches of 3 give one batch of 12's loss and gradients (1e-5)."""
    family, recipe, model = build(name)
    b = batch(recipe, 12)
    loss, expected = full_batch_grads(family, model, recipe, b)
    model.zero_grad(set_to_none=True)
    losses = accumulate_gradients(family, model, split(b, 4), recipe)
    assert abs(float(losses["loss"]) - loss) < 1e-5
    assert_same(grads(model), expected)
    if name == "clip":  # the check has teeth: summing the micro-batches' own contrastive losses is another gradient
        model.zero_grad(set_to_none=True)
        for micro in split(b, 4):
            (family.training_step(model, micro, recipe)["loss"] / 4).backward()
        assert not torch.allclose(grads(model)["logit_scale"], expected["logit_scale"], atol=1e-5)


@pytest.mark.parametrize("name", ["clip", "text-lm", "vlmo"])
def test_grad_checkpointing_keeps_loss_and_gradients(name: str) -> None:
    """Checkpointed layers (CLIP's and GPT-2's Hugging Face layers, VLMo's own multiway blocks) give the same loss
    and gradients, and keep less for the backward pass."""
    from vlforge.components.models.common.checkpointing import enable_grad_checkpointing

    family, recipe, model = build(name)
    b = batch(recipe, 6)
    loss, expected = full_batch_grads(family, model, recipe, b)
    plain_saved = saved_bytes(lambda: family.training_step(model, b, recipe)["loss"])
    assert enable_grad_checkpointing(model) > 0
    ck_loss, ck_grads = full_batch_grads(family, model, recipe, b)
    assert abs(ck_loss - loss) < 1e-6
    assert_same(ck_grads, expected)
    # the layers' activations are no longer kept for the backward pass (they are recomputed there)
    assert saved_bytes(lambda: family.training_step(model, b, recipe)["loss"]) < 0.7 * plain_saved


def saved_bytes(forward) -> int:
    """Bytes the autograd graph keeps for the backward pass while ``forward`` runs."""
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return total[0]


def _local_loss_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    family, recipe, model = build("clip", local_loss=True)
    mine = split(batch(recipe, 8), 2)[rank]
    loss = family.training_step(model, mine, recipe)["loss"]
    loss.backward()
    local = {"loss": loss.detach(), "grads": grads(model)}
    out = out.format(rank)
    # the same under DDP with accum_freq 2 (GradCache): micro-batches of 2 per rank, gradients averaged over ranks
    ddp = torch.nn.parallel.DistributedDataParallel(build("clip", local_loss=True)[2])
    accumulated = accumulate_gradients(family, ddp, split(mine, 2), recipe)
    torch.save({**local, "accum_loss": accumulated["loss"], "accum_grads": grads(ddp.module)}, out)
    dist.destroy_process_group()


def test_local_loss_on_two_gloo_processes_equals_the_global_loss(tmp_path: Path) -> None:
    """Two gloo processes with local_loss: the ranks' mean loss is one process's loss over both halves, and their
    mean gradient (what DDP applies) its gradient; with accum_freq 2 under DDP each rank ends with that gradient."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_local_loss_worker, args=(port, str(tmp_path / "rank{}.pt")), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    family, recipe, model = build("clip")
    loss, expected = full_batch_grads(family, model, recipe, batch(recipe, 8))
    assert abs(float(ranks[0]["loss"] + ranks[1]["loss"]) / 2 - loss) < 1e-5
    assert abs(float(ranks[0]["loss"]) - float(ranks[1]["loss"])) > 1e-6  # each rank's loss is its own rows'
    assert_same({n: (ranks[0]["grads"][n] + ranks[1]["grads"][n]) / 2 for n in expected}, expected)
    for r in ranks:
        assert_same(r["accum_grads"], expected)


def test_lr_schedules() -> None:
    family = get_family("clip")
    at = lambda **kw: [round(_lr_lambda(family.recipe("tiny", {"steps": 10, "warmup_steps": 2, **kw}))(s), 6)
                       for s in range(10)]
    assert at() == [0.5, 1.0, 1.0, 0.961940, 0.853553, 0.691342, 0.5, 0.308658, 0.146447, 0.038060]
    assert at(lr_scheduler="const") == [0.5] + [1.0] * 9
    # lr 1e-3, cooldown over the last 4 steps to 2e-4: factor 1 -> 0.2 linearly
    assert at(lr_scheduler="const-cooldown", cooldown_steps=4, lr_cooldown_end=2e-4) == \
        [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4]


def test_bad_scale_fields_are_one_line_user_errors() -> None:
    clip, text_lm, vlmo = (get_family(n) for n in ("clip", "text-lm", "vlmo"))
    cases = [
        (clip, {"precision": "fp16"}, None, "fp16 needs a GPU"),
        (text_lm, {"local_loss": True}, None, "no gathered contrastive loss"),
        (vlmo, {"accum_freq": 2}, None, "accum_freq must be 1"),
        (clip, {"accum_freq": 4, "batch_size": 64}, 200, "256 samples per step, more than the 200"),
        (clip, {"lr_scheduler": "const-cooldown"}, None, r"cooldown steps \(got 0\)"),
    ]
    for family, overrides, samples, message in cases:
        with pytest.raises(UserError, match=message) as err:
            check_scale_fields(family, family.recipe("tiny", overrides), samples)
        assert "\n" not in str(err.value)
    check_scale_fields(clip, clip.recipe("tiny", {"accum_freq": 2, "batch_size": 64, "precision": "bf16"}), 200)
    with pytest.raises(UserError, match="precision"):
        clip.recipe("tiny", {"precision": "fp8"})
