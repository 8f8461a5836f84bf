"""In-training validation: a recipe's ``eval_every: N`` (0: off) runs, every N steps and at the last, on rank 0:

- the validation loss: the family's own ``training_step`` under ``torch.no_grad`` in eval mode on the first
  ``VAL_BATCHES`` batches of the dataset's ``validation`` split (the same batches every time, so the curve compares
  like with like), each loss the objective returns logged as ``val_<name>`` (``val_loss``, ...);
- the family's headline zero-shot metric: the first task of ``ZERO_SHOT_TASKS`` that fits the family and the
  split (``evaluation/tasks.py``), run by the evaluation code itself on the first ``VAL_SAMPLES`` samples, its
  headline metric logged as ``val_<key>`` (CLIP on labelled data: ``val_zs_top1``; on captions: ``val_i2t_r1``).

The cheapest sound way: the subset is read and its images decoded once at the start, the model is the training
model itself (unwrapped from DDP, no copy, no save), and the RNG is forked and seeded so that a family whose
objective draws random numbers (masking) gets the same draw every time and leaves the training's RNG untouched:
a run with ``eval_every`` trains the same weights as one without. The other ranks wait at their next gradient
all-reduce meanwhile; the validation loss contrasts within rank 0's batches only (``gather_features`` off), as a
gathered loss would wait for ranks that are not validating. Tasks that fit a head (linear probe, NLU probe, NLVR2
fine-tuning) or generate long texts are left out: they cost far more than a few training steps.
``check_validation`` runs at plan time."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vlforge.components.data.loader import decode_image, read_split
from vlforge.components.models.registry import Family, ImageTextBatch, Recipe
from vlforge.errors import UserError

VAL_SPLIT = "validation"
VAL_BATCHES = 4  # batches of the per-worker batch size for the validation loss
VAL_SAMPLES = 256  # samples for the zero-shot metric
# zero-shot tasks in the order a family's headline is chosen: the first that fits
ZERO_SHOT_TASKS = ("zero_shot_classification", "retrieval", "itm", "vqa", "nlvr", "grounding")


def headline_task(family: Family, offers: frozenset[str]) -> str | None:
    """The zero-shot task whose headline metric in-training validation reports, or None when none fits."""
    from vlforge.components.evaluation.tasks import TASKS, fit_gap

    return next((t for t in ZERO_SHOT_TASKS if fit_gap(TASKS[t], family, offers) is None), None)


def check_validation(recipe: Recipe, dataset_dir: Path, dataset_name: str) -> None:
    """Plan time: ``eval_every`` needs a validation split with samples."""
    if not recipe.eval_every:
        return
    manifest = dataset_dir / "manifest.json"
    splits = json.loads(manifest.read_text()).get("splits", {}) if manifest.is_file() else {}
    if not splits.get(VAL_SPLIT, {}).get("shards"):
        raise UserError(f"recipe field 'eval_every': dataset '{dataset_name}' has no '{VAL_SPLIT}' split to validate on")


class Validator:
    """Validation of the training model on a fixed subset of the validation split (rank 0)."""

    def __init__(self, family: Family, recipe: Recipe, tokenizer: Any, dataset_dir: Path, device: torch.device,
                 batch_size: int) -> None:
        from vlforge.components.evaluation.tasks import dataset_offers

        self.family, self.recipe, self.tokenizer, self.device = family, recipe, tokenizer, device
        # rank 0 validates alone: a loss that gathers features across ranks would wait forever for the others
        self.loss_recipe = recipe.model_copy(update={"gather_features": False}) \
            if "gather_features" in type(recipe).model_fields else recipe
        self.manifest = json.loads((dataset_dir / "manifest.json").read_text())
        # read_split reads the whole split; a validation split is a small fraction of the data
        self.samples = read_split(dataset_dir, VAL_SPLIT)[: max(VAL_SAMPLES, VAL_BATCHES * batch_size)]
        if not self.samples:
            raise UserError(f"dataset '{dataset_dir.name}' has no samples in split '{VAL_SPLIT}'")
        self.task = headline_task(family, dataset_offers(dataset_dir, VAL_SPLIT))
        transform = family.image_transform(recipe)
        self.batches = []
        for i in range(0, min(len(self.samples), VAL_BATCHES * batch_size), batch_size):
            chunk = self.samples[i : i + batch_size]
            self.batches.append((torch.stack([transform(decode_image(s.image, recipe.image_size)) for s in chunk]),
                                 [s.caption for s in chunk], [s.key for s in chunk], [s.meta for s in chunk]))

    def _loss(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        from vlforge.components.training.loop import word_id_tensor

        sums: dict[str, float] = {}
        for pixels, captions, keys, meta in self.batches:
            enc = self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.recipe.max_text_length,
                                 return_tensors="pt")
            batch = ImageTextBatch(pixel_values=pixels.to(self.device), input_ids=enc["input_ids"].to(self.device),
                                   attention_mask=enc["attention_mask"].to(self.device), captions=captions, keys=keys,
                                   word_ids=word_id_tensor(enc, len(captions)).to(self.device), meta=meta, step=step,
                                   tokenizer=self.tokenizer, max_text_length=self.recipe.max_text_length)
            for k, v in self.family.training_step(model, batch, self.loss_recipe).items():
                sums[k] = sums.get(k, 0.0) + float(v.detach().float())
        return {f"val_{k}": v / len(self.batches) for k, v in sums.items()}

    def _headline(self, model: torch.nn.Module) -> dict[str, float]:
        from vlforge.components.evaluation.tasks import TASKS, EvalContext, run_task

        if self.task is None:
            return {}
        ctx = EvalContext(self.family, model, self.recipe, self.tokenizer, self.samples[:VAL_SAMPLES],
                          manifest=self.manifest, device=self.device)
        metrics = run_task(self.task, ctx).metrics
        key = next((k for k in TASKS[self.task].headlines if k in metrics), None)
        return {} if key is None else {f"val_{key}": float(metrics[key])}

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """``val_*`` metrics of ``model`` (the family's own module, not a DDP wrapper) after ``step`` steps."""
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), torch.no_grad():
                torch.manual_seed(self.recipe.seed)
                return {**self._loss(model, step), **self._headline(model)}
        finally:
            model.train(was_training)
