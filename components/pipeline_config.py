"""The pipeline's configuration as data: one pydantic model, loadable from YAML, with the embedded default
that ``make demo`` runs (the builtin shapes source through a tiny CLIP)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from vlforge.components.data.crawl import CrawlConfig
from vlforge.components.data.shard import ShardConfig
from vlforge.components.sources.config import MixPart, SourceConfig
from vlforge.components.tokenizer import TokenizerConfig

from vlforge.errors import UserError

__all__ = ["MixPart", "SourceConfig", "PipelineConfig", "ingest_configs", "load_pipeline_config", "parse_assignments",
           "section_config", "split_sections"]


class ContinueStageConfig(BaseModel):
    """A train stage that continues the previous stage's model: its recipe's ``init_from`` is set to that model,
    which becomes its parent (VLMo's stages 2 and 3; VL-T5 / VL-BART's captioning fine-tuning)."""

    model_config = ConfigDict(extra="forbid")
    recipe: str
    overrides: dict[str, Any] = Field(default_factory=dict)


class TrainStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: str = "clip"
    recipe: str = "tiny"
    overrides: dict[str, Any] = Field(default_factory=dict)
    then: list[ContinueStageConfig] = Field(
        default_factory=list, description="further stages, each continuing the previous one's model; the eval "
        "scores the last")
    ray_address: str | None = None
    ray_storage: str | None = None  # where Ray keeps checkpoints, e.g. s3://bucket/ray (else $VLFORGE_RAY_STORAGE)


class EvalStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: list[str] = Field(default_factory=lambda: ["retrieval", "zero_shot_classification"])
    split: str = Field("validation", pattern="^(train|validation|all)$")
    # as `vlforge run eval`'s options (components/evaluation/options.py)
    classnames: str | None = Field(None, description="zero-shot class names file, one a line in class order")
    templates: str | None = Field(None, description="zero-shot prompt templates file, one a line with {}")
    baseline: bool | None = Field(None, description="score an untrained model too (default: where cheap)")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    text_encoder: bool = Field(True, description="NLU probe: also fine-tune the text encoder the model started from "
                               "and report the delta (vlforge run eval --text-encoder/--no-text-encoder)")


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: SourceConfig = Field(default_factory=SourceConfig)
    crawl: CrawlConfig = Field(default_factory=lambda: CrawlConfig(image_size=64))
    shard: ShardConfig = Field(default_factory=ShardConfig)
    tokenizer: TokenizerConfig = Field(default_factory=lambda: TokenizerConfig(vocab_size=512))
    train: TrainStageConfig = Field(default_factory=TrainStageConfig)
    eval: EvalStageConfig = Field(default_factory=EvalStageConfig)


def validation_message(where: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    field = ".".join(str(x) for x in err["loc"]) or "?"
    return f"{where}: field '{field}': {err['msg']} (got {err.get('input')!r})"


def read_yaml_mapping(path: Path, what: str = "a mapping at top level") -> dict[str, Any]:
    """A YAML file that must hold a mapping; UserError (one line) when missing, malformed or of another shape."""
    if not path.is_file():
        raise UserError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold {what}")
    return data


def load_pipeline_config(path: Path | None) -> PipelineConfig:
    if path is None:
        return PipelineConfig()
    data = read_yaml_mapping(path)
    try:
        return PipelineConfig(**data)
    except ValidationError as exc:
        raise UserError(validation_message(f"config file '{path}'", exc)) from None


def parse_assignments(pairs: list[str], where: str = "--set") -> dict[str, Any]:
    """``["batch_size=64", "lr=1e-3"]`` -> ``{"batch_size": 64, "lr": 0.001}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{where} '{pair}' is not KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def split_sections(pairs: dict[str, Any], sections: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``{"crawl.timeout": 5}`` -> ``{"crawl": {"timeout": 5}, ...}``; UserError for a key outside ``sections``."""
    out: dict[str, dict[str, Any]] = {s: {} for s in sections}
    for key, value in pairs.items():
        section, dot, field = key.partition(".")
        if not dot or section not in sections:
            raise UserError(f"--set '{key}' must name a section: {', '.join(s + '.FIELD' for s in sections)}")
        out[section][field] = value
    return out


def section_config(default: BaseModel, updates: dict[str, Any], where: str, prefix: str = "") -> Any:
    """``default`` with ``updates`` applied and validated; UserError naming ``where`` and the field (under
    ``prefix.``) that is wrong."""
    try:
        return default.model_validate(default.model_dump() | updates)
    except ValidationError as exc:
        message = validation_message(where, exc)
        raise UserError(message.replace("field '", f"field '{prefix}.", 1) if prefix else message) from None


def parse_mix_options(items: list[str], columns: dict[str, Any]) -> list[dict[str, Any]]:
    """``--mix SOURCE=WEIGHT`` options -> the mix parts of a ``SourceConfig`` (each with ``columns``)."""
    parts = []
    for item in items:
        spec, sep, text = item.rpartition("=")
        try:
            weight = float(text)
        except ValueError:
            weight = 0.0
        if not sep or not spec or not weight > 0:
            raise UserError(f"--mix '{item}' is not SOURCE=WEIGHT with a positive weight")
        parts.append({"spec": spec, "weight": weight, **columns})
    return parts


def ingest_configs(source: str, *, name: str | None = None, columns: dict[str, Any] | None = None,
                   mix: list[str] | None = None, images: str | None = None, classnames: str | None = None,
                   templates: str | None = None, crawl: dict[str, Any] | None = None,
                   assignments: dict[str, Any] | None = None) -> tuple[SourceConfig, CrawlConfig, ShardConfig]:
    """The ingest stage's (source, crawl, shard) configs from ``vlforge run ingest``'s options: ``columns`` (url_col,
    caption_col, path_col, label_col, key_col), ``--mix SOURCE=WEIGHT`` parts (with ``source == "mix"``), the crawl
    options given (``crawl``: field -> value, None ones left out) and ``--set crawl.X=.. shard.Y=..``
    (``assignments``) over the pipeline's defaults. One-line UserErrors name the option that is wrong."""
    columns = dict(columns or {})
    sections = split_sections(assignments or {}, ("crawl", "shard"))
    sections["crawl"].update({k: v for k, v in (crawl or {}).items() if v is not None})
    if bool(mix) != (source == "mix"):
        raise UserError("--mix SOURCE=WEIGHT goes with --source mix (and --source mix needs at least one --mix)")
    src = SourceConfig(spec=source, name=name, mix=parse_mix_options(mix or [], columns), images=images,
                       classnames=classnames, templates=templates, **columns)
    defaults = PipelineConfig()
    return (src, section_config(defaults.crawl, sections["crawl"], "--set crawl.*", "crawl"),
            section_config(defaults.shard, sections["shard"], "--set shard.*", "shard"))
