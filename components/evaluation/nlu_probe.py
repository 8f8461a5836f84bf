"""The NLU probe: the survey's analysis of visual extensions on language understanding ("Effect of Visual
Extensions on Natural Language Understanding in Vision-and-Language Models", Iki & Aizawa, EMNLP 2021).

A vision-and-language model's text side is fine-tuned on a text-only task (classification; STS-B's regression),
with a constant black image wherever the model needs an image, and compared with a text-only model trained on the
same text (the ``text-mlm`` family in this project: run the probe on both and the leaderboard shows the paper's
table at this scale). The text task here is the dataset's class label predicted from the caption alone; on a ``glue:`` dataset
it is the GLUE task itself, also scored with the task's own metric (``glue_matthews_correlation`` for CoLA,
``glue_accuracy`` and ``glue_f1`` for MRPC and QQP, ``glue_accuracy`` for the others, each with ``glue_score``,
GLUE's mean of the task's metrics). STS-B is GLUE's regression: one output regressed on the 0-5 similarity score
with a mean squared error, scored by ``glue_pearson`` and ``glue_spearmanr`` (``glue_score``, their mean, is the
headline there, as the task has no accuracy) and ``nlu_mse``.

Procedure: a copy of the model (the evaluated checkpoint is never changed) gets a linear head (a classifier, or
one output for STS-B) on ``text_features``; both are fine-tuned end to end with AdamW for ``EPOCHS`` passes over
(at most ``MAX_TRAIN``) train-split captions in a seeded order, then scored on the evaluated split. The runner's untrained-model baseline
goes through the same fine-tuning, so the gap is what pretraining gave the text side.

The paper's comparison: a V&L model whose text side started from a text-only encoder (a recipe's
``text_init``, e.g. a ``text-mlm`` trained here or an imported BERT; for a model continued from another,
``init_from``, that model's, followed back; a teacher does not count, the weights never start from it) is compared
with that very encoder: the probe fine-tunes and scores the encoder too, with the same procedure, seed, text
length (the evaluated model's ``max_text_length``), data and head, each with its own tokenizer (the V&L model kept
the encoder's vocabulary), and reports ``nlu_text_encoder_<metric>``
for each headline metric (``nlu_text_encoder_accuracy``, ``nlu_text_encoder_glue_score``) and
``nlu_visual_extension_delta``, the model's headline minus the encoder's: what the visual extension did to the text
side's language understanding. It doubles the probe's cost; ``vlforge run eval --no-text-encoder`` skips it. An
encoder the probe cannot run (a family without ``text_features``, a folder that is gone) gets a note in the
report (``notes.nlu_text_encoder_note``), never a number."""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image
from vlforge.components.models.capabilities import DualEncoder, TextFeatures, capability

from vlforge.errors import UserError

if TYPE_CHECKING:
    from vlforge.catalog import Artifact, Catalog
    from vlforge.components.evaluation.tasks import EvalContext, TaskOutput
    from vlforge.components.models.registry import Family, Recipe

MAX_TRAIN = 2000
EPOCHS = 3
BATCH = 32
LR = 1e-4
HEAD_LR = 1e-2
REGRESSION_TASKS = frozenset({"stsb"})  # GLUE's regression: one output, MSE loss, Pearson/Spearman
ENCODER_PREFIX = "nlu_text_encoder_"
DELTA = "nlu_visual_extension_delta"


@dataclass(frozen=True)
class TextEncoder:
    """The text-only model a V&L model's text side started from: its folder and, where the catalog gave it, its id."""

    path: Path
    id: str | None = None
    via: str = "text_init"  # how it was reached: ``text_init``, or ``init_from -> text_init`` back a chain


def find_text_encoder(model_dir: Path, catalog: Catalog | None = None, artifact: Artifact | None = None) -> TextEncoder | None:
    """The text encoder the model in ``model_dir`` started its text side from: its recipe's ``text_init`` or, for a
    model continued from another (``init_from``, which decides the weights when both are set), that model's,
    followed back; None where the text side started from scratch. With the catalog and the model's artifact, the
    ids its config records (``artifacts``: what the train stage resolved ``catalog:REF`` to) are followed, so the
    encoder is found where the catalog keeps it; else the folders the saved recipe names."""
    from vlforge.components.models.registry import FAMILY_FILE

    hops: list[str] = []
    seen: set[Path] = set()
    while (model_dir / FAMILY_FILE).is_file() and model_dir.resolve() not in seen:
        seen.add(model_dir.resolve())
        meta = json.loads((model_dir / FAMILY_FILE).read_text())
        recorded = {"init_from": meta.get("init_from") or meta["recipe"].get("init_from"),
                    "text_init": meta["recipe"].get("text_init")}
        ids = ((artifact.config.get("artifacts") or {}) if artifact is not None else {})
        field = next((f for f in ("init_from", "text_init") if recorded[f] or ids.get(f)), None)
        if field is None:
            return None
        hops.append(field)
        ref = ids.get(field) if catalog is not None and catalog.exists(ids.get(field) or "") else None
        path = catalog_folder(catalog, ref) if catalog is not None and ref else None
        path = path or Path(str(recorded[field] or ids.get(field)))
        if field == "text_init":
            return TextEncoder(path, ref, " -> ".join(hops))
        model_dir, artifact = path, (catalog.get(ref) if catalog is not None and ref else None)
    return None


def catalog_folder(catalog: Catalog, ref: str) -> Path | None:
    """The catalog's folder of ``ref``, or None where it cannot give it (its files are gone from every store): the
    probe then says so in a note instead of the eval failing."""
    try:
        return catalog.path(ref)
    except UserError:
        return None


def probe_family(encoder: TextEncoder) -> tuple[Family, Recipe] | str:
    """The encoder's family and recipe, or why the NLU probe cannot run it (one line, for the report's note)."""
    from vlforge.components.evaluation.tasks import TASKS, family_offers
    from vlforge.components.models.registry import FAMILY_FILE, read_family_file

    if not (encoder.path / FAMILY_FILE).is_file():
        return (f"the text encoder ({encoder.via}) is not a vlforge model here (its folder is gone or has no "
                f"{FAMILY_FILE})")
    try:
        family, recipe = read_family_file(encoder.path)
    except UserError as exc:
        return f"the text encoder ({encoder.via}) cannot be read: {str(exc).splitlines()[0]}"
    if not any(need <= family_offers(family) for need in TASKS["nlu_probe"].model_any):
        return (f"the text encoder ({encoder.via}) is a '{family.name}' model, which the NLU probe cannot run "
                "(no text_features)")
    return family, recipe


def text_features_fn(ctx: EvalContext):
    """The family's ``text_features`` or, for a dual encoder, its text embedding."""
    if isinstance(ctx.family, TextFeatures):
        own = ctx.family
        return lambda model, ids, mask, pixels: own.text_features(model, ids, mask, pixels)
    encoder = capability(ctx.family, DualEncoder)
    return lambda model, ids, mask, pixels: encoder.encode_texts(model, ids, mask)


def black_image(ctx: EvalContext) -> torch.Tensor:
    """The constant black image (1, 3, S, S), normalised as the model's inputs are."""
    size = ctx.recipe.image_size
    return ctx.pixels([Image.new("RGB", (size, size))])


def glue_task_metrics(task: str, predictions: list, labels: list) -> dict[str, float]:
    """The GLUE task's own metric(s) (``metrics.glue``) as ``glue_<name>``, and ``glue_score``, GLUE's score of
    the task: the unweighted mean of its metrics (Wang et al. 2018, section 4; STS-B: Pearson and Spearman).
    Classification labels that are class numbers as written (``0``/``1``: CoLA, MRPC, QQP) keep their number, so
    F1 is that of class 1, others are numbered in sorted order; STS-B's are scores, compared as numbers."""
    from vlforge.components.evaluation.metrics import glue_metrics

    if task in REGRESSION_TASKS:
        scores = glue_metrics(task, [float(p) for p in predictions], [float(t) for t in labels])
    else:
        names = sorted(set(labels) | set(predictions))
        number = {n: int(n) for n in names} if all(n.isdigit() for n in names) else {n: k for k, n in enumerate(names)}
        scores = glue_metrics(task, [number[p] for p in predictions], [number[t] for t in labels])
    return {f"glue_{k}": v for k, v in scores.items()} | {"glue_score": sum(scores.values()) / len(scores)}


def fine_tune_text_side(ctx: EvalContext, texts: list[str], targets: torch.Tensor, outputs: int,
                        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        head_bias: torch.Tensor | None = None) -> Callable[[list[str]], torch.Tensor]:
    """Fine-tune a copy of the model's text side with a linear head of ``outputs`` units on ``texts`` ->
    ``targets`` (seeded order and dropout), the head's bias starting at ``head_bias`` where given; returns the
    fine-tuned predictor, texts -> (N, outputs) head outputs."""
    features = text_features_fn(ctx)
    black = black_image(ctx)
    model = copy.deepcopy(ctx.model).train()
    with torch.no_grad():
        ids, mask = ctx.tokens(texts[:1])
        dim = features(model, ids, mask, black).shape[-1]
    gen = torch.Generator().manual_seed(ctx.recipe.seed)
    head = torch.nn.Linear(dim, outputs)
    with torch.random.fork_rng():
        torch.manual_seed(ctx.recipe.seed)  # dropout during fine-tuning, reproducibly
        head.reset_parameters()
        if head_bias is not None:
            with torch.no_grad():
                head.bias.copy_(head_bias)
        head.to(ctx.device)  # initialised on the CPU, so the head starts the same on every device
        params = [p for p in model.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)  # the probe fine-tunes the whole text side, frozen parts included
        opt = torch.optim.AdamW([{"params": params, "lr": LR}, {"params": head.parameters(), "lr": HEAD_LR}],
                                weight_decay=0.01)
        for _ in range(EPOCHS):
            order = torch.randperm(len(texts), generator=gen).tolist()
            for k in range(0, len(order), BATCH):
                idx = order[k : k + BATCH]
                ids, mask = ctx.tokens([texts[i] for i in idx])
                out = head(features(model, ids, mask, black.expand(len(idx), -1, -1, -1)).float())
                loss = loss_fn(out, targets[idx].to(out.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    model.eval()

    @torch.no_grad()
    def predict(batch_texts: list[str]) -> torch.Tensor:
        out = [torch.empty(0, outputs)]
        for k in range(0, len(batch_texts), 2 * BATCH):
            chunk = batch_texts[k : k + 2 * BATCH]
            ids, mask = ctx.tokens(chunk)
            out.append(head(features(model, ids, mask, black.expand(len(chunk), -1, -1, -1)).float()).cpu())
        return torch.cat(out)

    return predict


def _score(label: str) -> float | None:
    try:
        return float(label)
    except ValueError:
        return None


def run_nlu_probe(ctx: EvalContext) -> TaskOutput:
    """The probe on the model and, where its text side started from a text encoder (``ctx.text_encoder``), on that
    encoder with the same procedure: its headline metrics and the delta join the model's metrics."""
    output = probe(ctx)
    if ctx.text_encoder is not None:
        metrics, notes = compare_with_text_encoder(ctx, output.metrics)
        output.metrics |= metrics
        output.notes |= notes
    return output


def compare_with_text_encoder(ctx: EvalContext, metrics: dict[str, float]) -> tuple[dict[str, float], dict[str, str]]:
    """The text encoder's headline metrics (``nlu_text_encoder_<metric>``, ``nlu_`` dropped) and the model's
    headline minus the encoder's (``nlu_visual_extension_delta``), from the probe run on the encoder with the
    model's seed, text length, data and head, and the encoder's own tokenizer (the one its vocabulary is; the V&L
    model kept it). The notes say how the encoder was reached and its family, or why it could not be probed; they
    name no folder or id, which differ between catalogs (the report stays byte-identical under ``vlforge
    reproduce``; the eval stage records the encoder's id in the eval's config)."""
    from vlforge.components.evaluation.tasks import TASKS
    from vlforge.components.tokenizer import load_tokenizer

    encoder = ctx.text_encoder
    assert encoder is not None
    notes = {"nlu_text_encoder_via": encoder.via}
    found = probe_family(encoder)
    if isinstance(found, str):
        return {}, notes | {"nlu_text_encoder_note": f"{found}: not compared"}
    family, recipe = found
    try:
        model, tokenizer = family.load(encoder.path).eval(), load_tokenizer(encoder.path)
    except (UserError, OSError) as exc:  # its weights or tokenizer missing or unreadable
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        return {}, notes | {"nlu_text_encoder_note": f"the text encoder ({encoder.via}) cannot be loaded: {why}: "
                            "not compared"}
    recipe = recipe.model_copy(update={"seed": ctx.recipe.seed, "max_text_length": ctx.recipe.max_text_length})
    own = dataclasses.replace(ctx, family=family, model=model, recipe=recipe, tokenizer=tokenizer,
                              text_encoder=None, _images=None, _image_emb=None)
    del model
    theirs = probe(own).metrics
    del own
    heads = [k for k in TASKS["nlu_probe"].headlines if k in metrics and k in theirs]
    out = {ENCODER_PREFIX + k.removeprefix("nlu_"): theirs[k] for k in heads}
    if heads:
        out[DELTA] = metrics[heads[0]] - theirs[heads[0]]
    return out, notes | {"nlu_text_encoder_family": family.name}


def probe(ctx: EvalContext) -> TaskOutput:
    """The probe proper on ``ctx.model``: classification, or STS-B's regression on a ``glue:stsb`` dataset."""
    task = (ctx.manifest.get("source") or {}).get("glue_task")
    if task in REGRESSION_TASKS:
        return run_nlu_regression(ctx, task)
    from vlforge.components.evaluation.plots import plot_confusion
    from vlforge.components.evaluation.tasks import TaskOutput

    train = [s for s in ctx.train_samples() if s.meta.get("label") and s.caption.strip()][:MAX_TRAIN]
    classes = sorted({s.meta["label"] for s in train})
    labels = torch.tensor([classes.index(s.meta["label"]) for s in train])
    predict = fine_tune_text_side(ctx, [s.caption for s in train], labels, len(classes), F.cross_entropy)
    keep = [i for i, s in enumerate(ctx.samples) if s.meta.get("label") in classes]
    preds = predict([ctx.samples[i].caption for i in keep]).argmax(dim=1).tolist()
    truth = [ctx.samples[i].meta["label"] for i in keep]
    correct = [classes[p] == t for p, t in zip(preds, truth)]
    metrics = {"nlu_accuracy": sum(correct) / max(1, len(correct)), "nlu_chance": 1.0 / max(1, len(classes)),
               "nlu_train_samples": float(len(train))}
    if task and truth:
        metrics |= glue_task_metrics(task, [classes[p] for p in preds], truth)
    rows = {"key": [ctx.samples[i].key for i in keep], "label": truth, "prediction": [classes[p] for p in preds]}
    return TaskOutput(metrics, rows, {"nlu_probe_confusion.png": lambda path: plot_confusion(
        [classes.index(t) for t in truth], preds, classes, path)})


def run_nlu_regression(ctx: EvalContext, task: str) -> TaskOutput:
    """STS-B as GLUE defines it: one output (its bias starting at the train scores' mean) regressed on the
    similarity score with a mean squared error, scored by
    Pearson and Spearman correlation (``glue_pearson``, ``glue_spearmanr``; ``glue_score`` their mean, the
    headline) and ``nlu_mse``. Samples whose label is not a number are left out; a correlation that is undefined
    (constant predictions) counts 0.0."""
    from vlforge.components.evaluation.tasks import TaskOutput

    train = [s for s in ctx.train_samples() if _score(s.meta.get("label") or "") is not None and s.caption.strip()]
    train = train[:MAX_TRAIN]
    if len(train) < 2:
        raise UserError(f"glue task '{task}' needs at least 2 scored train samples for the NLU probe, found {len(train)}")
    targets = torch.tensor([_score(s.meta["label"]) for s in train], dtype=torch.float32)
    # the bias starts at the train scores' mean: the few steps go to the variation, which the correlations score,
    # not to climbing from 0 to the mean offset (at HEAD_LR that alone takes some 250 steps)
    predict = fine_tune_text_side(ctx, [s.caption for s in train], targets, 1,
                                  lambda out, y: F.mse_loss(out.squeeze(1), y), head_bias=targets.mean().view(1))
    keep = [i for i, s in enumerate(ctx.samples) if _score(s.meta.get("label") or "") is not None]
    preds = predict([ctx.samples[i].caption for i in keep]).squeeze(1).tolist()
    truth = [float(_score(ctx.samples[i].meta["label"])) for i in keep]
    metrics = {"nlu_train_samples": float(len(train))}
    if len(truth) >= 2:
        # a constant prediction has no correlation (nan in SciPy): it counts 0.0, as the catalog keeps finite numbers
        metrics |= {k: 0.0 if math.isnan(v) else v for k, v in glue_task_metrics(task, preds, truth).items()}
        metrics["nlu_mse"] = sum((p - t) ** 2 for p, t in zip(preds, truth)) / len(truth)
    rows = {"key": [ctx.samples[i].key for i in keep], "label": truth, "prediction": preds}
    return TaskOutput(metrics, rows)
