"""The pipeline's stages as plain functions over the catalog, one module each around one skeleton (``base``):
``ingest``, ``filter``, ``tokenizer``, ``train``, ``eval`` and ``imports`` (a checkpoint vlforge did not train);
``keys`` computes their cache keys from the code they really run, ``plan`` resolves a training request (teachers,
``then`` stages, ``init_from``) into the steps the flows walk.

Each stage takes artifact references and a config, computes its cache key — the ids of its input artifacts, its
full config and a fingerprint of the code it runs — and returns the catalog entry that key already names, or does
the work in ``$VLFORGE_HOME/work/<stage>/<key>/`` and registers the result with its parents. Prefect flows
(``flows/``) call these and use the same keys for their task cache."""
from vlforge.components.stages.base import Output, StageResult, on_cluster, require_kind, run_stage
from vlforge.components.stages.eval import eval_plan, eval_suite, run_eval
from vlforge.components.stages.filter import filter_plan, run_filter
from vlforge.components.stages.imports import ImportResult, run_import
from vlforge.components.stages.ingest import ResolvedSource, ingest_key, load_source_rows, resolve_source, run_ingest
from vlforge.components.stages.ingest_retry import RetryPlan, ingest_retry_plan, run_ingest_retry
from vlforge.components.stages.keys import code_files, code_fingerprint, import_closure, stage_key
from vlforge.components.stages.plan import (
    TrainPlan,
    TrainStep,
    check_train_stages,
    continue_overrides,
    default_teacher_overrides,
    missing_teachers,
    plan_training,
)
from vlforge.components.stages.tokenizer import TASK_PROMPT_WORDS, run_tokenizer, task_texts, tokenizer_key
from vlforge.components.stages.train import (
    artifact_refs,
    TrainData,
    check_teacher,
    parse_data_options,
    resolve_artifact_fields,
    run_train,
    teacher_overrides,
    train_key,
    training_data,
)

__all__ = [
    "TASK_PROMPT_WORDS", "ImportResult", "Output", "ResolvedSource", "RetryPlan", "StageResult", "TrainData", "TrainPlan",
    "TrainStep", "parse_data_options", "training_data",
    "artifact_refs", "check_teacher", "check_train_stages", "code_files", "code_fingerprint", "continue_overrides",
    "default_teacher_overrides", "eval_plan", "eval_suite", "filter_plan", "import_closure", "ingest_key", "ingest_retry_plan",
    "load_source_rows", "missing_teachers", "on_cluster", "plan_training", "require_kind", "resolve_artifact_fields",
    "resolve_source", "run_eval", "run_filter", "run_import", "run_ingest", "run_ingest_retry", "run_stage", "run_tokenizer",
    "run_train", "stage_key", "task_texts", "teacher_overrides", "tokenizer_key", "train_key",
]
