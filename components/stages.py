"""The pipeline's stages as plain functions over the catalog: ingest, tokenizer, train, evaluate.

Each stage takes artifact references and a config, computes its cache key — the ids of its input artifacts,
its full config and a fingerprint of the code it runs — and returns the catalog entry that key already names,
or does the work in ``$VLFORGE_HOME/work/<stage>/<key>/`` and registers the result with its parents. The same
key always gives the same work folder, so a stage killed part-way resumes (img2dataset's incremental mode, Ray
Train's checkpoints). Prefect flows (``flows/``) call these and use the same keys for their task cache."""
from __future__ import annotations

import hashlib
import importlib
import json
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.parquet as pq
from pydantic import BaseModel
from vlforge.catalog import Artifact, Catalog, detect_code_version, packages_snapshot
from vlforge.components.data.card import write_dataset_card
from vlforge.components.data.crawl import CrawlConfig, check_nonempty, crawl
from vlforge.components.data.filter import FilterConfig, filter_dataset
from vlforge.components.data.shard import CrawlSharder, ShardConfig
from vlforge.components.models.registry import get_family
from vlforge.components.pipeline_config import SourceConfig
from vlforge.components.sources import shapes
from vlforge.components.sources.tables import (
    SourceRows,
    is_remote,
    load_image_folder,
    mix_sources,
    load_local_table,
    load_url_list,
    read_parquet,
    sniff_table_kind,
)
from vlforge.components.tokenizer import (
    TokenizerConfig,
    load_tokenizer,
    train_tokenizer,
)

from vlforge.errors import UserError
from vlforge.settings import work_root

COMPONENTS_DIR = Path(__file__).resolve().parent
REPO_DIR = COMPONENTS_DIR.parent
PACKAGES = ("vlforge", "torch", "transformers", "tokenizers", "img2dataset", "webdataset", "pyarrow", "ray", "prefect", "numpy", "pillow")
# The code each stage runs, fingerprinted into its cache key (Prefect's TASK_SOURCE would only see the wrapper).
STAGE_CODE = {
    "ingest": ("data", "sources", "stages.py"),
    "filter": ("data", "models", "tokenizer.py", "stages.py"),
    "tokenizer": ("tokenizer.py", "stages.py"),
    "train": ("training", "models", "losses.py", "data/loader.py", "tokenizer.py", "plots.py", "stages.py"),
    "eval": ("evaluation", "models", "data/loader.py", "sources/scene_tasks.py", "tokenizer.py", "stages.py"),
}


@dataclass
class StageResult:
    artifact: Artifact
    cached: bool
    seconds: float


def code_fingerprint(stage: str) -> str:
    h = hashlib.sha256()
    for rel in STAGE_CODE[stage]:
        root = COMPONENTS_DIR / rel
        files = sorted(root.rglob("*")) if root.is_dir() else [root]
        for f in files:
            if f.is_file() and f.suffix in (".py", ".yaml") and "__pycache__" not in f.parts:
                h.update(f.relative_to(COMPONENTS_DIR).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def stage_key(stage: str, inputs: dict[str, str], config: dict[str, Any]) -> str:
    payload = {"stage": stage, "inputs": inputs, "config": config, "code": code_fingerprint(stage)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _register(catalog: Catalog, **kwargs: Any) -> Artifact:
    return catalog.register(code_version=detect_code_version(REPO_DIR), packages=packages_snapshot(PACKAGES), **kwargs)


def _require_kind(catalog: Catalog, ref: str, kind: str, option: str) -> Artifact:
    art = catalog.get(ref)
    if art.kind != kind:
        raise UserError(f"{option} '{ref}' is a {art.kind}, not a {kind}")
    return art


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# ------------------------------------------------------------------------------------------------ ingest
@dataclass
class ResolvedSource:
    kind: str  # builtin | url-list | local | folder | mix
    name: str
    fingerprint: str
    describe: dict[str, Any]


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "dataset"
    return name if name[0].isalnum() else f"d{name}"


def resolve_source(cfg: SourceConfig) -> ResolvedSource:
    """Validate a source and fingerprint its content without crawling it (cheap; runs before any work)."""
    spec = cfg.spec.strip()
    if not spec:
        raise UserError("source is empty")
    if spec.startswith("builtin:"):
        params = shapes.parse_builtin_source(spec)
        code = hashlib.sha256(Path(shapes.__file__).read_bytes()).hexdigest()
        fp = hashlib.sha256(json.dumps({**params, "code": code}, sort_keys=True).encode()).hexdigest()
        return ResolvedSource("builtin", _safe_name(cfg.name or params["name"]), fp, {"spec": spec, **params})
    if spec == "mix" or cfg.mix:
        rows = _load_rows(cfg, "mix", spec)
        return ResolvedSource("mix", _safe_name(cfg.name or "mix"), rows.fingerprint, {"spec": "mix", **rows.description})
    if is_remote(spec):  # an fsspec URL list (s3://, gs://, https://, file://, ...)
        rows = _load_rows(cfg, "url-list", spec)
        name = _safe_name(cfg.name or Path(spec.split("?", 1)[0]).stem)
        return ResolvedSource("url-list", name, rows.fingerprint, {"spec": spec, **rows.description})
    path = Path(spec).expanduser()
    if path.is_dir():
        kind = "folder"
    else:
        kind = "local" if sniff_table_kind(path, cfg.url_col, cfg.path_col) == "local" else "url-list"
    rows = _load_rows(cfg, kind, spec)
    name = _safe_name(cfg.name or path.stem)
    return ResolvedSource(kind, name, rows.fingerprint, {"spec": str(path.resolve()), **rows.description})


def _load_rows(cfg: SourceConfig, kind: str, spec: str) -> SourceRows:
    if kind == "mix":
        if not cfg.mix:
            raise UserError("source 'mix' needs a list of parts under source.mix")
        parts = []
        for part in cfg.mix:
            if part.spec.strip().startswith("builtin:") or part.spec.strip() == "mix":
                raise UserError(f"source.mix part '{part.spec}': only URL lists, local tables and image folders mix")
            sub = SourceConfig(**part.model_dump(exclude={"weight"}))
            parts.append((_load_rows(sub, resolve_source(sub).kind, part.spec.strip()), part.weight))
        return mix_sources(parts, cfg.mix_seed)
    if is_remote(spec):
        return load_url_list(spec, cfg.url_col, cfg.caption_col, cfg.label_col)
    path = Path(spec).expanduser()
    if kind == "folder":
        return load_image_folder(path)
    if kind == "local":
        return load_local_table(path, cfg.path_col, cfg.caption_col, cfg.label_col, cfg.key_col)
    return load_url_list(path, cfg.url_col, cfg.caption_col, cfg.label_col)


def _builtin_rows(params: dict, work: Path) -> SourceRows:
    table_path = shapes.generate_shapes(work / "generated", n=params["n"], seed=params["seed"], image_size=params["image_size"])
    rows = load_local_table(table_path, "path", "caption", "label", "key")
    facts = read_parquet(table_path, columns=["facts"]).column("facts")
    rows.table = rows.table.set_column(rows.table.column_names.index("facts"), "facts", facts)
    rows.description = {"kind": "builtin", **params}
    return rows


def ingest_key(cfg: SourceConfig, crawl_cfg: CrawlConfig, shard_cfg: ShardConfig) -> tuple[str, ResolvedSource]:
    src = resolve_source(cfg)
    config = {"source": cfg.model_dump(), "fingerprint": src.fingerprint, "crawl": crawl_cfg.model_dump(), "shard": shard_cfg.model_dump()}
    return stage_key("ingest", {}, config), src


def run_ingest(cfg: SourceConfig, crawl_cfg: CrawlConfig, shard_cfg: ShardConfig, catalog: Catalog,
               ray_address: str | None = None) -> StageResult:
    start = time.perf_counter()
    key, src = ingest_key(cfg, crawl_cfg, shard_cfg)
    if (hit := catalog.find_by_cache_key(key)) is not None:
        return StageResult(hit, True, time.perf_counter() - start)
    work = work_root() / "ingest" / key[:16]
    work.mkdir(parents=True, exist_ok=True)
    rows = _builtin_rows(src.describe, work) if src.kind == "builtin" else _load_rows(cfg, src.kind, cfg.spec.strip())
    # each crawl shard is sharded as soon as img2dataset finishes it, while the crawl goes on; the card's plotting
    # library is imported meanwhile too (~0.5 s)
    sharder = CrawlSharder(_fresh_dir(work / "dataset"), shard_cfg)
    warm = threading.Thread(target=importlib.import_module, args=("matplotlib.figure",), daemon=True)
    warm.start()
    result = crawl(rows, work / "crawl", crawl_cfg, ray_address=ray_address, on_shard_done=sharder.add)
    check_nonempty(result, cfg.spec)
    out = sharder.out_dir
    manifest = sharder.finish(result, {"kind": src.kind, **src.describe})
    warm.join()
    if manifest["samples"] == 0:
        raise UserError(f"source '{cfg.spec}' yielded no decodable images")
    write_dataset_card(out, src.name, f"{src.describe.get('spec')} ({src.kind})", manifest)
    metrics = {
        "samples": manifest["samples"],
        "train_samples": manifest["splits"]["train"]["samples"],
        "validation_samples": manifest["splits"]["validation"]["samples"],
        "attempted": manifest["attempted"],
        "failed": manifest["attempted"] - manifest["samples"],
        "shards": len(manifest["shards"]),
    }
    art = _register(
        catalog, kind="dataset", name=src.name, files=out,
        config={"source": cfg.model_dump(), "crawl": crawl_cfg.model_dump(), "shard": shard_cfg.model_dump()},
        metrics=metrics, cache_key=key,
    )
    shutil.rmtree(work, ignore_errors=True)  # the catalog holds the shards now
    return StageResult(art, False, time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------ filter
def filter_plan(data_ref: str, cfg: FilterConfig, catalog: Catalog) -> tuple[str, Artifact, Artifact | None]:
    """Resolve the filter stage's inputs (the dataset and, for the CLIP-score rule, the scoring model) and key."""
    dataset = _require_kind(catalog, data_ref, "dataset", "--data")
    model = _require_kind(catalog, cfg.clip_model, "model", "clip_model") if cfg.clip_model else None
    if model is not None and "retrieval" not in get_family(model.family or "").capabilities:
        raise UserError(f"clip_model '{cfg.clip_model}' is a {model.family} model, not a dual image-text encoder")
    inputs = {"dataset": dataset.id} | ({"model": model.id} if model else {})
    return stage_key("filter", inputs, cfg.model_dump()), dataset, model


def run_filter(data_ref: str, cfg: FilterConfig, catalog: Catalog, ray_address: str | None = None) -> StageResult:
    start = time.perf_counter()
    key, dataset, model = filter_plan(data_ref, cfg, catalog)
    if (hit := catalog.find_by_cache_key(key)) is not None:
        return StageResult(hit, True, time.perf_counter() - start)
    out = _fresh_dir(work_root() / "filter" / key[:16])
    manifest = on_cluster(ray_address, filter_dataset, catalog.path(dataset.id), out, cfg,
                          catalog.path(model.id) if model else None)
    if manifest["samples"] == 0:
        shutil.rmtree(out, ignore_errors=True)
        raise UserError(f"filtering dataset '{dataset.name}' removed every sample ({manifest['removed_by_rule']})")
    name = f"{dataset.name}-filtered"
    write_dataset_card(out, name, f"{dataset.name} ({dataset.id[:12]}) filtered", manifest)
    metrics = {"samples": manifest["samples"], "input_samples": manifest["attempted"],
               "train_samples": manifest["splits"]["train"]["samples"],
               "validation_samples": manifest["splits"]["validation"]["samples"]}
    art = _register(catalog, kind="dataset", name=name, files=out, config=cfg.model_dump(),
                    parents=[dataset.id] + ([model.id] if model else []), metrics=metrics, cache_key=key)
    shutil.rmtree(out, ignore_errors=True)
    return StageResult(art, False, time.perf_counter() - start)


# --------------------------------------------------------------------------------------------- tokenizer
# The words of the task prompts the generative families train and the evaluation asks with, so they are not
# <unk> for a tokenizer learned from captions (``evaluation/vqa.py``, ``models/vlt5/tasks.py``).
TASK_PROMPT_WORDS = ("question: answer: caption: image text match: true false visual grounding: caption region: "
                     "span prediction: denoise text: yes no")


def task_texts(train_rows: list[dict]) -> list[str]:
    """Texts the tokenizer learns besides the captions: the task prompt words and, for samples with scene facts,
    their VQA questions with answers (the training split only, as for the captions)."""
    from vlforge.components.sources.scene_tasks import vqa_questions

    texts = [TASK_PROMPT_WORDS]
    for row in train_rows:
        if row.get("facts"):
            facts = json.loads(row["facts"]) if isinstance(row["facts"], str) else row["facts"]
            texts += [f"question: {q.question} answer: {q.answer}" for q in vqa_questions(row.get("key") or "", facts)]
    return texts


def run_tokenizer(data_ref: str, cfg: TokenizerConfig, catalog: Catalog, ray_address: str | None = None) -> StageResult:
    start = time.perf_counter()
    dataset = _require_kind(catalog, data_ref, "dataset", "--data")
    key = stage_key("tokenizer", {"dataset": dataset.id}, cfg.model_dump())
    if (hit := catalog.find_by_cache_key(key)) is not None:
        return StageResult(hit, True, time.perf_counter() - start)
    index = catalog.path(dataset.id) / "samples.parquet"
    columns = [c for c in ("caption", "split", "key", "facts") if c in pq.read_schema(index).names]
    train = [s for s in read_parquet(index, columns=columns).to_pylist() if s["split"] == "train"]
    corpus = [s["caption"] for s in train] + task_texts(train)
    out = _fresh_dir(work_root() / "tokenizer" / key[:16])
    on_cluster(ray_address, train_tokenizer, corpus, out, cfg)
    art = _register(catalog, kind="tokenizer", name=f"{dataset.name}-tokenizer", files=out, config=cfg.model_dump(),
                    parents=[dataset.id], metrics={"vocab_size": len(load_tokenizer(out))}, cache_key=key)
    shutil.rmtree(out, ignore_errors=True)
    return StageResult(art, False, time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------- train
T = TypeVar("T")


def on_cluster(ray_address: str | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` here, or with a Ray address as one Ray task on that cluster (its nodes must see the paths in
    ``args``: one machine, or a shared filesystem). Errors come back as the task's exception."""
    if not ray_address:
        return fn(*args)
    import ray

    from vlforge.components.training.ray_runtime import ensure_ray

    ensure_ray(ray_address)
    try:
        return ray.get(ray.remote(num_cpus=1, max_retries=0)(fn).remote(*args))
    except ray.exceptions.RayTaskError as exc:
        raise exc.as_instanceof_cause() from None


def resolve_artifact_fields(family: Any, recipe: BaseModel, catalog: Catalog) -> tuple[BaseModel, list[str]]:
    """Recipe fields that may name a catalog artifact (``catalog:REF``, e.g. CLIP's ``text_tower`` or a family's
    teacher) become the artifact's local directory, and the artifact becomes a parent of what is trained
    (lineage). A teacher field only takes a model of one of the families the family accepts there."""
    parents: list[str] = []
    updates: dict[str, str] = {}
    for field in (*family.artifact_fields, *family.teachers):
        value = getattr(recipe, field, None)
        if isinstance(value, str) and value.startswith("catalog:"):
            art = catalog.get(value[len("catalog:"):])
            if field in family.teachers:
                check_teacher(family, field, art, value[len("catalog:"):])
            updates[field] = str(catalog.path(art.id))
            parents.append(art.id)
    return (recipe.model_copy(update=updates) if updates else recipe), parents


def check_teacher(family: Any, field: str, art: Artifact, ref: str) -> None:
    accepted = family.teachers[field]
    if art.kind != "model":
        raise UserError(f"teacher '{ref}' is a {art.kind}, not a model (family '{family.name}' takes a "
                        f"{' or '.join(accepted)} model as its {field})")
    if art.family not in accepted:
        raise UserError(f"teacher '{ref}' is a '{art.family}' model; family '{family.name}' takes a "
                        f"{' or '.join(accepted)} model as its {field}")


def teacher_overrides(family_name: str, refs: list[str], catalog: Catalog) -> dict[str, str]:
    """``--teacher REF`` options -> recipe overrides: each REF fills the teacher field whose accepted families
    include the model's family (``catalog:ID``). One-line errors for a family without teachers, a REF that is
    not a model, or a model of a family no teacher field accepts."""
    family = get_family(family_name)
    if refs and not family.teachers:
        raise UserError(f"family '{family_name}' takes no teacher (--teacher {refs[0]})")
    overrides: dict[str, str] = {}
    for ref in refs:
        art = catalog.get(ref)
        fields = [f for f, fams in family.teachers.items() if art.kind == "model" and art.family in fams]
        free = [f for f in fields if f not in overrides]
        if not free:
            wanted = "; ".join(f"{f}: {' or '.join(fams)}" for f, fams in family.teachers.items())
            what = f"a '{art.family}' model" if art.kind == "model" else f"a {art.kind}"
            raise UserError(f"--teacher '{ref}' is {what}; family '{family_name}' takes teachers ({wanted})")
        overrides[free[0]] = f"catalog:{art.id}"
    return overrides


def missing_teachers(family_name: str, recipe: BaseModel) -> dict[str, str]:
    """Teacher fields the recipe leaves empty -> the family of the teacher the train flow trains for them."""
    family = get_family(family_name)
    return {f: fams[0] for f, fams in family.needed_teachers(recipe).items() if not getattr(recipe, f, None)}


def default_teacher_overrides(family_name: str, recipe: BaseModel, field: str, shared: dict[str, Any],
                              dataset_dir: Path) -> dict[str, Any]:
    """The overrides of the default teacher trained for ``field``: the fields every recipe shares (``shared``,
    e.g. ``--steps``), then what the student family asks of that teacher for this dataset's training split."""
    from vlforge.components.evaluation.tasks import dataset_offers

    family = get_family(family_name)
    return {**shared, **family.teacher_overrides(field, recipe, dataset_offers(dataset_dir, "train"))}  # type: ignore[arg-type]


def continue_overrides(family_name: str, recipe_name: str, overrides: dict[str, Any], previous: str,
                       where: str) -> dict[str, Any]:
    """The overrides of a train stage that continues the model ``previous`` (an artifact id): its recipe's
    ``init_from`` set to it. UserError (naming ``where``) when the family's recipes cannot continue a model, the
    recipe does not exist, or the stage sets ``init_from`` itself."""
    family = get_family(family_name)
    if "init_from" not in family.recipe_cls.model_fields:
        raise UserError(f"{where}: family '{family.name}' cannot continue a model (its recipes have no init_from)")
    if "init_from" in overrides:
        raise UserError(f"{where}: overrides.init_from is the previous stage's model; do not set it")
    out = {**overrides, "init_from": f"catalog:{previous}"}
    try:
        family.recipe(recipe_name, out)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    return out


def check_train_stages(family_name: str, recipe_name: str, overrides: dict[str, Any],
                       then: list[Any]) -> None:
    """Before any work: the family, each stage's recipe and overrides exist and fit (UserError otherwise)."""
    get_family(family_name).recipe(recipe_name, overrides)
    for i, stage in enumerate(then):
        continue_overrides(family_name, stage.recipe, stage.overrides, "0" * 64, f"train.then[{i}]")


def train_plan(family_name: str, recipe_name: str, overrides: dict[str, Any], data_ref: str, tokenizer_ref: str,
               catalog: Catalog) -> tuple[str, Artifact, Artifact, BaseModel]:
    family = get_family(family_name)
    recipe, _ = resolve_artifact_fields(family, family.recipe(recipe_name, overrides), catalog)
    dataset = _require_kind(catalog, data_ref, "dataset", "--data")
    tokenizer = _require_kind(catalog, tokenizer_ref, "tokenizer", "--tokenizer")
    family.preflight(recipe, load_tokenizer(catalog.path(tokenizer.id)))
    config = {"family": family.name, "recipe": recipe_name, "values": recipe.model_dump(mode="json")}
    key = stage_key("train", {"dataset": dataset.id, "tokenizer": tokenizer.id}, config)
    return key, dataset, tokenizer, recipe


def run_train(family_name: str, recipe_name: str, overrides: dict[str, Any], data_ref: str, tokenizer_ref: str,
              catalog: Catalog, ray_address: str | None = None, ray_storage: str | None = None) -> StageResult:
    """Train (or find cached) the model; ``ray_storage`` (else ``$VLFORGE_RAY_STORAGE``) puts Ray's checkpoints on
    shared storage such as ``s3://bucket/prefix`` instead of the work folder. Where checkpoints go is not part of
    the cache key: it changes nothing in the model."""
    start = time.perf_counter()
    key, dataset, tokenizer, recipe = train_plan(family_name, recipe_name, overrides, data_ref, tokenizer_ref, catalog)
    if (hit := catalog.find_by_cache_key(key)) is not None:
        return StageResult(hit, True, time.perf_counter() - start)
    from vlforge.components.plots import plot_training_log  # matplotlib and Ray: only when there is work to do
    from vlforge.components.training.loop import TRAIN_LOG, train

    family = get_family(family_name)
    _, extra_parents = resolve_artifact_fields(family, family.recipe(recipe_name, overrides), catalog)
    work = work_root() / "train" / key[:16]
    out = work / "model"
    summary = train(family_name=family_name, recipe=recipe, dataset_dir=catalog.path(dataset.id),
                    tokenizer_dir=catalog.path(tokenizer.id), run_dir=work / "ray" / f"run-{key[:16]}", out_dir=out,
                    ray_address=ray_address, storage=ray_storage)
    history = [json.loads(line) for line in (out / TRAIN_LOG).read_text().splitlines() if line]
    plot_training_log(history, out / "loss.png", f"{family_name} / {recipe_name} on {dataset.name}")
    art = _register(
        catalog, kind="model", name=f"{family_name}-{dataset.name}", family=family_name, files=out,
        config={"family": family_name, "recipe": recipe_name, "values": recipe.model_dump(mode="json")},
        parents=[dataset.id, tokenizer.id, *extra_parents], metrics={k: ",".join(v) if isinstance(v, list) else round(float(v), 6) for k, v in summary.items()},
        cache_key=key,
    )
    shutil.rmtree(work, ignore_errors=True)
    return StageResult(art, False, time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------ eval
def eval_plan(model_ref: str, data_ref: str, tasks: list[str], split: str, catalog: Catalog) -> tuple[str, Artifact, Artifact]:
    from vlforge.components.evaluation.tasks import check_fit, dataset_offers

    model = _require_kind(catalog, model_ref, "model", "--model")
    dataset = _require_kind(catalog, data_ref, "dataset", "--data")
    family = get_family(model.family or "")
    if split not in ("train", "validation", "all"):
        raise UserError(f"--split '{split}' is not one of train, validation, all")
    if not tasks:
        raise UserError("no evaluation task given")
    check_fit(tasks, family, dataset_offers(catalog.path(dataset.id), split), dataset.name)
    key = stage_key("eval", {"model": model.id, "dataset": dataset.id}, {"tasks": sorted(tasks), "split": split})
    return key, model, dataset


def eval_suite(model_ref: str, data_ref: str, suite: str, split: str, catalog: Catalog) -> tuple[list[str], dict[str, str]]:
    """The tasks of ``suite`` that fit the model's family and the dataset split, and why the others do not."""
    from vlforge.components.evaluation.tasks import dataset_offers, suite_tasks

    model = _require_kind(catalog, model_ref, "model", "--model")
    dataset = _require_kind(catalog, data_ref, "dataset", "--data")
    if split not in ("train", "validation", "all"):
        raise UserError(f"--split '{split}' is not one of train, validation, all")
    tasks, skipped = suite_tasks(suite, get_family(model.family or ""), dataset_offers(catalog.path(dataset.id), split))
    if not tasks:
        raise UserError(f"no task of suite '{suite}' fits model '{model_ref}' and dataset '{data_ref}'")
    return tasks, skipped


def run_eval(model_ref: str, data_ref: str, tasks: list[str], split: str, catalog: Catalog,
             ray_address: str | None = None) -> StageResult:
    from vlforge.components.evaluation.runner import evaluate

    start = time.perf_counter()
    key, model, dataset = eval_plan(model_ref, data_ref, tasks, split, catalog)
    if (hit := catalog.find_by_cache_key(key)) is not None:
        return StageResult(hit, True, time.perf_counter() - start)
    out = _fresh_dir(work_root() / "eval" / key[:16])
    metrics = on_cluster(ray_address, evaluate, catalog.path(model.id), catalog.path(dataset.id), split, sorted(tasks), out)
    art = _register(catalog, kind="eval", name=f"{model.name}-eval", family=model.family, files=out,
                    config={"tasks": sorted(tasks), "split": split}, parents=[model.id, dataset.id],
                    metrics={k: round(v, 6) for k, v in metrics.items()}, cache_key=key)
    shutil.rmtree(out, ignore_errors=True)
    return StageResult(art, False, time.perf_counter() - start)
