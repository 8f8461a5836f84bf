"""The family interface and registry: what the training loop and the evaluation tasks need from a model family.

A family is a config schema (a pydantic ``Recipe`` subclass), named recipes stored as YAML beside its code, a
model builder, a training objective and save/load. The Ray training loop (``components/training``) and the
evaluation tasks only talk to this interface, so a new family plugs in by registering a ``Family`` subclass
in its own folder under ``components/models/<family>/``; nothing in the loop changes."""
from __future__ import annotations

import fnmatch
import importlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from vlforge.errors import UserError

FAMILY_FILE = "vlforge_family.json"  # written beside every checkpoint: which family and recipe made it


class Recipe(BaseModel):
    """Training hyperparameters every family shares; families subclass it with their architecture fields."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    steps: int = Field(200, ge=1)
    batch_size: int = Field(64, ge=1, description="global batch size, split across Ray workers")
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(20, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    seed: int = 0
    image_size: int = Field(64, ge=8)
    image_resize: Literal["squash", "shortest-crop"] = Field(
        "squash", description="how an image becomes image_size x image_size: squash (the whole image) or "
        "shortest-crop (shortest side to image_size, then the centre: CLIP's and open_clip's); an imported model "
        "keeps its source's")
    image_mean: tuple[float, float, float] | None = Field(None, description="pixel normalisation mean (None: the "
                                                          "family's); an imported model keeps its source's")
    image_std: tuple[float, float, float] | None = Field(None, description="pixel normalisation std (None: the "
                                                         "family's); an imported model keeps its source's")
    max_text_length: int = Field(32, ge=4)
    num_workers: int = Field(2, ge=1, description="Ray Train workers")
    threads_per_worker: int = Field(1, ge=1)
    use_gpu: bool = False
    precision: str = Field("fp32", pattern="^(fp32|bf16|fp16)$", description="fp32; bf16 autocast (CPU or GPU); "
                           "fp16 autocast with a GradScaler (GPU only: use_gpu)")
    accum_freq: int = Field(1, ge=1, description="micro-batches of batch_size per optimizer step (effective batch "
                            "batch_size x accum_freq); a contrastive family's gradient equals the full batch's "
                            "(GradCache: Family.features / loss_from_features), others sum micro-batch losses / k")
    local_loss: bool = Field(False, description="contrastive families: each rank's features against the gathered "
                             "ones only (memory linear in the global batch; same loss and gradient as the global loss)")
    grad_checkpointing: bool = Field(False, description="activation checkpointing of the transformer layers "
                                     "(recomputed in the backward pass: less memory, about a third more compute)")
    parallel: Literal["ddp", "fsdp"] = Field("ddp", description="how the Ray workers split the model: ddp "
                                             "(a replica per worker) or fsdp (FSDP2: parameters, gradients and "
                                             "optimiser state sharded per transformer layer; also on one worker, as a "
                                             "1-rank group; fp32 or bf16)")
    lr_scheduler: Literal["cosine", "const", "const-cooldown"] = Field("cosine", description="after warmup_steps of "
                                                                      "linear warmup: cosine decay to 0, constant, or "
                                                                      "constant then a linear cooldown")
    cooldown_steps: int = Field(0, ge=0, description="const-cooldown: the last N steps decay linearly from lr to "
                                "lr_cooldown_end (open_clip's epochs_cooldown, in steps)")
    lr_cooldown_end: float = Field(0.0, ge=0, description="const-cooldown: the learning rate the cooldown ends at")
    checkpoint_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(0, ge=0, description="every N steps and at the last: the validation loss and the "
                            "family's headline zero-shot metric as val_* (components/training/validation.py; 0: off)")
    tracking: list[Literal["mlflow", "tensorboard"]] = Field(default_factory=list, description="log parameters, "
                                                             "metrics and catalog ids to MLflow/TensorBoard "
                                                             "(components/training/tracking.py)")
    shuffle_buffer: int = Field(512, ge=1)
    resampled: bool = Field(False, description="draw training shards with replacement, per loader consumer "
                            "(open_clip's --dataset-resampled; components/data/loader.py)")
    train_num_samples: int | None = Field(None, ge=1, description="samples per data epoch (open_clip's "
                                          "--train-num-samples): every that many samples, rounded up to whole "
                                          "batches per loader consumer, the loader starts a new epoch (new shard "
                                          "order or draws, empty shuffle buffer); training still lasts steps. "
                                          "None: an epoch is one pass over the shards")
    train_crop_scale: tuple[float, float] | None = Field(None, description="training images only: a random "
                                                        "resized crop of this share range of the image's area, "
                                                        "aspect 3/4 to 4/3, bicubic to image_size (open_clip's "
                                                        "default augmentation: [0.9, 1.0]), drawn per sample from "
                                                        "the seeded stream; None: off. Validation, evaluation and "
                                                        "filtering never crop")
    loader_workers: int = Field(0, ge=0, description="DataLoader processes decoding images per Ray worker (0: decode "
                                "in the training process; the batch sequence depends on this number)")
    freeze: list[str] = Field(default_factory=list, description="parameter-name globs to freeze (the loop's general "
                              "freezing; a family adds its own through Family.frozen_patterns)")

    @field_validator("train_crop_scale")
    @classmethod
    def _crop_scale_in_unit_range(cls, scale: tuple[float, float] | None) -> tuple[float, float] | None:
        if scale is not None and not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError("must be [low, high] with 0 < low <= high <= 1")
        return scale


@dataclass
class ImageTextBatch:
    """What the loop hands a family each step (tensors already on the worker's device)."""

    pixel_values: torch.Tensor  # (B, 3, H, W), normalised
    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    captions: list[str]
    keys: list[str]
    word_ids: torch.Tensor | None = None  # (B, L) word index per token, -1 for specials (whole-word masking)
    meta: list[dict] = field(default_factory=list)  # per-sample metadata from the shard: label, facts (builtin scenes)
    step: int = 0  # the optimiser step this batch is for (task samplers, schedules)
    tokenizer: Any = None  # the run's tokenizer, for objectives that write new texts (rewrites, task prompts)
    max_text_length: int | None = None

    def facts(self) -> list[dict | None]:
        """Each sample's scene facts (``components/sources/shapes.py``), None where the source has none."""
        return [(m or {}).get("facts") or None for m in (self.meta or [{}] * len(self.keys))]

    def tokenize(self, texts: list[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise new texts like the loop tokenises captions (padded to ``max_length``, default the recipe's),
        on the batch's device: ``(input_ids, attention_mask)``."""
        if self.tokenizer is None:
            raise RuntimeError("this batch carries no tokenizer")
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True,
                             max_length=max_length or self.max_text_length or self.input_ids.shape[1], return_tensors="pt")
        return enc["input_ids"].to(self.input_ids.device), enc["attention_mask"].to(self.input_ids.device)


class Family(ABC):
    """One model family. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]
    paper: ClassVar[str]
    recipe_cls: ClassVar[type[Recipe]] = Recipe
    capabilities: ClassVar[frozenset[str]] = frozenset()  # e.g. {"retrieval", "zero_shot_classification"}
    # recipe fields whose value may be ``catalog:REF``: resolved to the artifact's directory and made a parent
    artifact_fields: ClassVar[tuple[str, ...]] = ()
    # teacher recipe fields -> the families a teacher for that field may come from (the first is the default one
    # the train flow trains in the DAG when the field is left empty). Teacher fields take ``catalog:REF`` too.
    teachers: ClassVar[dict[str, tuple[str, ...]]] = {}
    objectives: ClassVar[tuple[str, ...]] = ()  # the training objectives, for `vlforge families`
    image_mean: ClassVar[tuple[float, float, float]] = (0.48145466, 0.4578275, 0.40821073)
    image_std: ClassVar[tuple[float, float, float]] = (0.26862954, 0.26130258, 0.27577711)

    def image_transform(self, recipe: Recipe) -> Any:
        """The ``data.loader.ImageTransform`` every stage feeds this family's model with under ``recipe``: its image
        size and resize mode, and its mean and std where it names them (an imported model's), else the family's;
        it carries ``train_crop_scale``, which only the training stream applies."""
        from vlforge.components.data.loader import ImageTransform

        return ImageTransform(recipe.image_size, recipe.image_mean or self.image_mean,
                              recipe.image_std or self.image_std, recipe.image_resize, recipe.train_crop_scale)

    # ---- recipes -------------------------------------------------------------------------------------
    def recipe_dir(self) -> Path:
        module = importlib.import_module(type(self).__module__)
        return Path(module.__file__).parent / "recipes"

    def recipe_names(self) -> list[str]:
        return sorted(p.stem for p in self.recipe_dir().glob("*.yaml"))

    def recipe(self, name: str = "tiny", overrides: dict[str, Any] | None = None) -> Recipe:
        """Load a named recipe and apply validated overrides; UserError names the bad field."""
        path = self.recipe_dir() / f"{name}.yaml"
        if not path.is_file():
            raise UserError(f"family '{self.name}' has no recipe '{name}' (recipes: {', '.join(self.recipe_names())})")
        data = yaml.safe_load(path.read_text()) or {}
        data.update(overrides or {})
        return self.validate_recipe(data, f"recipe '{name}' of family '{self.name}'")

    def validate_recipe(self, data: dict[str, Any], where: str) -> Recipe:
        try:
            return self.recipe_cls(**data)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or "?"
            raise UserError(f"{where}: field '{loc}': {err['msg']} (got {err.get('input')!r})") from None

    # ---- model ---------------------------------------------------------------------------------------
    @abstractmethod
    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module: ...

    @abstractmethod
    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        """Return the losses; key ``loss`` is optimised, the others are logged."""

    def preflight(self, recipe: Recipe, tokenizer: Any) -> None:
        """Cheap checks before a run is launched (e.g. that the tokenizer fits the model); UserError on a mismatch."""

    def frozen_patterns(self, recipe: Recipe) -> list[str]:
        """Parameter-name globs this family freezes for ``recipe`` (e.g. Frozen's language model), on top of
        ``recipe.freeze``. The loop applies both with ``apply_freeze``: frozen parameters get no gradient, no
        optimiser state and are skipped by the data-parallel wrapper."""
        return []

    def needed_teachers(self, recipe: Recipe) -> dict[str, tuple[str, ...]]:
        """The teacher fields ``recipe`` uses (default: every field of ``teachers``); the train flow trains a
        default teacher first for each one the recipe leaves empty."""
        return dict(self.teachers)

    def teacher_overrides(self, field: str, recipe: Recipe, offers: frozenset[str]) -> dict[str, Any]:
        """Recipe overrides for the default teacher the train flow trains for ``field`` (one ``recipe`` leaves
        empty), given what the training split offers (``evaluation.tasks.dataset_offers``: captions, labels, facts).
        Default: none. UserError when the recipe asks for a teacher the data cannot train."""
        return {}

    def after_optimizer_step(self, model: nn.Module, recipe: Recipe) -> None:
        """Hook for constraints applied after each update (e.g. CLIP's logit-scale clamp)."""

    # ---- training at scale (recipe fields accum_freq, local_loss) -----------------------------------------
    # True where the loss contrasts samples across the batch (summing micro-batch losses would not give the full
    # batch's gradient); such a family trains with accum_freq > 1 only through features + loss_from_features.
    batch_coupled_loss: ClassVar[bool] = False
    supports_local_loss: ClassVar[bool] = False  # its contrastive loss honours recipe.local_loss
    # Why ``parallel: fsdp`` cannot shard the family's model ("" where it can): FSDP hands a layer's full parameters
    # only to that layer's forward, so a step that reads parameters elsewhere cannot run sharded.
    shard_blocker: ClassVar[str] = ""

    def features(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor] | None:
        """GradCache's first half: the per-sample features (B, ...) the loss contrasts, or None where the family
        has no such split. ``loss_from_features`` of the concatenated features must equal ``training_step``."""
        return None

    def loss_from_features(self, model: nn.Module, features: dict[str, torch.Tensor], recipe: Recipe) -> dict[str, torch.Tensor]:
        """GradCache's second half: the losses (``training_step``'s keys) from ``features`` of a whole batch."""
        raise NotImplementedError(f"family '{self.name}' has no feature-level loss")

    def save(self, model: nn.Module, out_dir: Path, recipe: Recipe) -> None:
        """A recipe's ``init_from`` (the checkpoint a stage or a fine-tuning run continues from) is kept beside the
        saved recipe, not in it: the weights already hold it, and whoever rebuilds the recipe (evaluation's
        untrained baseline) must get a fresh model, not the previous one."""
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)  # type: ignore[operator]
        self.write_family_file(out_dir, recipe)

    def write_family_file(self, out_dir: Path, recipe: Recipe) -> None:
        """``vlforge_family.json``: the family, the recipe (``init_from`` beside it) and the task formats the model
        has seen in training (``seen_formats``)."""
        meta: dict[str, Any] = {"family": self.name, "task_formats": sorted(self.seen_formats(recipe))}
        if "init_from" in type(recipe).model_fields:
            meta["init_from"] = recipe.init_from  # type: ignore[attr-defined]
            recipe = recipe.model_copy(update={"init_from": None})
        meta["recipe"] = recipe.model_dump(mode="json")
        (Path(out_dir) / FAMILY_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))

    # ---- what training showed the model (zero-shot claims) -------------------------------------------
    def task_formats(self, recipe: Recipe) -> frozenset[str]:
        """The evaluation formats a run of ``recipe`` trains on itself (``"vqa"``: questions answered in the
        ``question: q answer: a`` form an evaluation asks them in). Evaluation calls a metric zero-shot only for a
        model that never saw its format (``seen_formats``)."""
        return frozenset()

    def seen_formats(self, recipe: Recipe) -> frozenset[str]:
        """``task_formats`` of ``recipe`` and of every model it starts from or keeps inside (its teacher and
        ``artifact_fields`` directories: a frozen LM pretrained on the format has seen it too)."""
        seen = set(self.task_formats(recipe))
        for field_name in (*self.teachers, *self.artifact_fields):
            source = getattr(recipe, field_name, None)
            if isinstance(source, str) and (Path(source) / FAMILY_FILE).is_file():
                seen |= model_seen_formats(Path(source))
        return frozenset(seen)

    @abstractmethod
    def load(self, model_dir: Path) -> nn.Module: ...

    # ---- dual-encoder capability (families with "retrieval") ------------------------------------------
    def encode_images(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"family '{self.name}' cannot embed images")

    def encode_texts(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"family '{self.name}' cannot embed texts")


def unwrap(model: nn.Module) -> Any:
    """The family's own model inside a data-parallel wrapper (``DistributedDataParallel.module``, FSDP's
    ``training.fsdp.ShardedModel.module``), or the model."""
    return getattr(model, "module", model)


def checkpoint_model_type(model_dir: Path | str, what: str) -> str | None:
    """The ``model_type`` in a ``save_pretrained`` directory's config.json; UserError when there is none."""
    config_file = Path(model_dir) / "config.json"
    if not config_file.is_file():
        raise UserError(f"'{model_dir}' holds no {what} checkpoint (no config.json)")
    return json.loads(config_file.read_text()).get("model_type")


def load_pretrained(model_dir: Path | str, model_cls: Any, model_type: str, what: str) -> nn.Module:
    """``model_cls.from_pretrained(model_dir)`` (local files, safetensors) after checking the directory holds a
    ``model_type`` checkpoint; one-line UserErrors name the directory and what it holds instead."""
    found = checkpoint_model_type(model_dir, what)
    if found != model_type:
        raise UserError(f"'{model_dir}' holds a '{found}' model, not a {what} one")
    return model_cls.from_pretrained(model_dir, local_files_only=True)


def apply_freeze(family: Family, model: nn.Module, recipe: Recipe) -> dict[str, int]:
    """Freeze every parameter whose name matches ``recipe.freeze`` or ``family.frozen_patterns(recipe)`` (globs);
    return the trainable and total parameter counts. A glob that matches nothing is an error (a typo would
    otherwise silently train what the user meant to freeze)."""
    patterns = list(recipe.freeze) + list(family.frozen_patterns(recipe))
    names = [n for n, _ in model.named_parameters()]
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise UserError(f"freeze pattern '{pat}' matches no parameter of family '{family.name}'")
    for name, p in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            p.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total}


def special_token_ids(tokenizer: Any) -> dict[str, int]:
    """The tokenizer's special-token ids by role (pad, bos, eos, mask, unk), those it has."""
    return {
        name: getattr(tokenizer, f"{name}_token_id")
        for name in ("pad", "bos", "eos", "mask", "unk")
        if getattr(tokenizer, f"{name}_token_id", None) is not None
    }


_FAMILIES: dict[str, Family] = {}
MODELS_DIR = Path(__file__).resolve().parent


def register_family(cls: type[Family]) -> type[Family]:
    """Register a family; TypeError when it lists a capability it does not implement (``capabilities.py``)."""
    from vlforge.components.models.capabilities import check_capabilities

    family = cls()
    check_capabilities(family, frozenset(cls.capabilities), Family)
    _FAMILIES[cls.name] = family
    return cls


def _load_builtin() -> None:
    """Import every family package under components/models/ (each registers itself); a new folder needs no edit here."""
    for pkg in sorted(p.parent.name for p in MODELS_DIR.glob("*/__init__.py")):
        importlib.import_module(f"vlforge.components.models.{pkg}")


def get_family(name: str) -> Family:
    if name not in _FAMILIES and (MODELS_DIR / (pkg := name.replace("-", "_")) / "__init__.py").is_file():
        importlib.import_module(f"vlforge.components.models.{pkg}")  # its own folder first: start-up imports one family
    if name not in _FAMILIES:
        _load_builtin()
    if name not in _FAMILIES:
        raise UserError(f"unknown family '{name}' (known: {', '.join(sorted(_FAMILIES))})")
    return _FAMILIES[name]


def family_names() -> list[str]:
    _load_builtin()
    return sorted(_FAMILIES)


def model_seen_formats(model_dir: Path) -> frozenset[str]:
    """The task formats the model in ``model_dir`` saw in training: as saved with it, or (a checkpoint saved before
    they were recorded) what its own recipe trains."""
    meta = json.loads((Path(model_dir) / FAMILY_FILE).read_text())
    if "task_formats" in meta:
        return frozenset(meta["task_formats"])
    family = get_family(meta["family"])
    return family.task_formats(family.validate_recipe(meta["recipe"], f"'{model_dir / FAMILY_FILE}'"))


def read_family_file(model_dir: Path) -> tuple[Family, Recipe]:
    """Which family and recipe produced the checkpoint in ``model_dir``."""
    path = model_dir / FAMILY_FILE
    if not path.is_file():
        raise UserError(f"'{model_dir}' is not a vlforge model (no {FAMILY_FILE})")
    meta = json.loads(path.read_text())
    family = get_family(meta["family"])
    return family, family.validate_recipe(meta["recipe"], f"'{path}'")
