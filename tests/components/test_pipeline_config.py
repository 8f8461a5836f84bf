"""The ingest and tokenizer stages' configs, built from the CLI's options in components (``pipeline_config``)."""
from __future__ import annotations

import pytest
from vlforge.components.pipeline_config import PipelineConfig, ingest_configs, section_config

from vlforge.errors import UserError

COLUMNS = {"url_col": "link", "caption_col": "text", "path_col": "path", "label_col": None, "key_col": "uid"}


def test_options_and_set_assignments_become_the_ingest_configs() -> None:
    src, crawl, shard = ingest_configs("urls.parquet", name="pool", columns=COLUMNS,
                                       crawl={"timeout": 3, "retries": None, "allow_hosts": ["127.0.0.1:8000"]},
                                       assignments={"crawl.max_bytes": 1000, "shard.samples_per_shard": 7})
    assert (src.spec, src.name, src.url_col, src.caption_col, src.key_col) == ("urls.parquet", "pool", "link", "text", "uid")
    defaults = PipelineConfig()
    assert (crawl.timeout, crawl.max_bytes, crawl.allow_hosts) == (3, 1000, ["127.0.0.1:8000"])
    assert crawl.retries == defaults.crawl.retries and crawl.image_size == defaults.crawl.image_size
    assert shard.samples_per_shard == 7


def test_a_mix_takes_each_sources_weight_and_the_columns() -> None:
    src, _, _ = ingest_configs("mix", columns=COLUMNS, mix=["a.parquet=3", "builtin:shapes?n=10=1.5"])
    assert [(p.spec, p.weight, p.url_col) for p in src.mix] == [("a.parquet", 3.0, "link"),
                                                                 ("builtin:shapes?n=10", 1.5, "link")]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"source": "mix"}, "--source mix needs at least one --mix"),
    ({"source": "a.parquet", "mix": ["b.parquet=1"]}, "--mix SOURCE=WEIGHT goes with --source mix"),
    ({"source": "mix", "mix": ["b.parquet=0"]}, "--mix 'b.parquet=0' is not SOURCE=WEIGHT with a positive weight"),
    ({"source": "mix", "mix": ["b.parquet=heavy"]}, "--mix 'b.parquet=heavy' is not SOURCE=WEIGHT"),
    ({"source": "mix", "mix": ["b.parquet"]}, "--mix 'b.parquet' is not SOURCE=WEIGHT"),
    ({"source": "a.parquet", "assignments": {"timeout": 3}}, "--set 'timeout' must name a section: crawl.FIELD"),
    ({"source": "a.parquet", "assignments": {"crawl.image_size": "big"}}, "--set crawl.*: field 'crawl.image_size'"),
    ({"source": "a.parquet", "crawl": {"retries": -1}}, "field 'crawl.retries'"),
])
def test_bad_ingest_options_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        ingest_configs(**kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_tokenizer_assignments_are_validated_against_the_default() -> None:
    base = PipelineConfig().tokenizer
    assert section_config(base, {"vocab_size": 300}, "--set").vocab_size == 300
    with pytest.raises(UserError, match="--set: field 'vocab_size'"):
        section_config(base, {"vocab_size": "many"}, "--set")


def test_the_eval_section_takes_the_eval_options(tmp_path) -> None:
    from vlforge.components.pipeline_config import load_pipeline_config

    config = tmp_path / "pipeline.yaml"
    config.write_text("eval:\n  text_encoder: false\n  baseline: true\n")
    ev = load_pipeline_config(config).eval
    assert ev.text_encoder is False and ev.baseline is True
    assert PipelineConfig().eval.text_encoder is True
    config.write_text("eval:\n  text_encoder: sometimes\n")
    with pytest.raises(UserError, match="text_encoder") as err:
        load_pipeline_config(config)
    assert "\n" not in str(err.value)
