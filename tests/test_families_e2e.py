"""Every registered family through the real DAG in one process: the train flow (Prefect, Ray Train with one worker,
teachers trained first where a family takes them) for a few steps on builtin scenes, then the default evaluation
task that fits it (the cheapest first; the evaluation tests cover the tasks themselves). Each family's model is
registered with its family and lineage (teachers as parents).

``make test`` runs the families that together take every path through the DAG: CLIP (no teacher), the unified model
(two teachers of two families, the image one supervised), and VL-T5's pretraining with its image-teacher, continued
by a captioning stage, in the ``train.then`` test below. The other families' runs (marker ``long``; Frozen, VLKD,
PromptFuse and vk-transfer train their text-lm, CLIP or text-bart teachers the same way) go through the same
family-agnostic loop, teacher resolution and flows: ``make test-long`` runs them, as ``make bench`` does; each
family's own step, save/load and evaluation tasks are checked in process in ``make test``
(tests/components/models/test_families.py, tests/components/evaluation/test_runner.py)."""

import pytest
from vlforge.catalog import Catalog
from vlforge.components.models.registry import family_names, get_family

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

IN_MAKE_TEST = ("clip", "unified")
CHEAPEST_FIRST = ("retrieval", "itm", "linear_probe", "nlu_probe", "captioning", "vqa")
STEPS = {"steps": 2, "batch_size": 8, "num_workers": 1, "checkpoint_every": 2, "log_every": 1, "warmup_steps": 1,
         "image_size": 32, "max_text_length": 16}


@pytest.fixture(scope="module")
def dag(tmp_path_factory: pytest.TempPathFactory):
    import os

    root = tmp_path_factory.mktemp("families")
    old = os.environ.get("VLFORGE_HOME")
    os.environ["VLFORGE_HOME"] = str(root / "home")
    from vlforge.components.data.crawl import CrawlConfig
    from vlforge.components.data.shard import ShardConfig
    from vlforge.components.pipeline_config import SourceConfig
    from vlforge.components.stages import run_ingest, run_tokenizer
    from vlforge.components.tokenizer import TokenizerConfig

    catalog = Catalog(root / "home" / "catalog")
    data = run_ingest(SourceConfig(spec="builtin:shapes?n=96&image_size=32"), CrawlConfig(image_size=32, processes=1),
                      ShardConfig(samples_per_shard=48, validation_fraction=0.25), catalog).artifact
    tok = run_tokenizer(data.id, TokenizerConfig(vocab_size=160), catalog).artifact
    yield {"catalog": catalog, "data": data.id, "tok": tok.id}
    from vlforge.components.training.ray_runtime import shutdown_ray

    shutdown_ray()
    os.environ.pop("VLFORGE_HOME") if old is None else os.environ.__setitem__("VLFORGE_HOME", old)


@pytest.mark.parametrize("name", [n if n in IN_MAKE_TEST else pytest.param(n, marks=pytest.mark.long)
                                  for n in family_names()])
def test_family_trains_through_the_dag_and_evaluates(name: str, dag: dict) -> None:
    from vlforge.components.stages import eval_suite
    from vlforge.flows.evaluate import eval_flow
    from vlforge.flows.train import train_flow

    catalog: Catalog = dag["catalog"]
    family = get_family(name)
    overrides = {k: v for k, v in STEPS.items() if k in family.recipe_cls.model_fields}
    result = train_flow(name, dag["data"], "tiny", overrides, dag["tok"])
    model = catalog.get(result["model"])
    assert model.family == name and model.metrics["steps"] == 2
    assert model.parents[:2] == [dag["data"], dag["tok"]]
    teachers = result.get("teachers", {})
    assert sorted(model.parents[2:]) == sorted(teachers.values())  # the teachers trained in the DAG are parents
    for field, teacher in teachers.items():
        assert catalog.get(teacher).family in family.teachers[field]
    if name == "unified":  # the builtin scenes have labels: the paper's supervised ViT teacher
        assert catalog.get(teachers["image_teacher"]).config["values"]["objective"] == "supervised"
    tasks, _ = eval_suite(model.id, dag["data"], "default", "validation", catalog)
    task = next(t for t in CHEAPEST_FIRST if t in tasks)
    report = catalog.get(eval_flow(model.id, dag["data"], [task], "validation")["eval"])
    assert report.parents == [model.id, dag["data"]] and report.metrics


def test_the_pipeline_chains_captioning_fine_tuning_after_pretraining(dag: dict) -> None:
    """``train.then`` in the pipeline config: VL-T5's tiny pretraining (its region teacher trained first), then the
    ``tiny-caption`` fine-tuning continuing that model, then the eval of the fine-tuned one. The configs are the
    fixture's, so the ingest, tokenizer, teacher and pretraining stages are cache hits of the tests above when they
    ran first; a second run is all cache hits with the same ids."""
    from vlforge.components.data.crawl import CrawlConfig
    from vlforge.components.data.shard import ShardConfig
    from vlforge.components.pipeline_config import PipelineConfig, SourceConfig
    from vlforge.components.tokenizer import TokenizerConfig
    from vlforge.flows.pipeline import pipeline_flow

    catalog: Catalog = dag["catalog"]
    family = get_family("vl-t5")
    overrides = {k: v for k, v in STEPS.items() if k in family.recipe_cls.model_fields}
    config = PipelineConfig(
        source=SourceConfig(spec="builtin:shapes?n=96&image_size=32"), crawl=CrawlConfig(image_size=32, processes=1),
        shard=ShardConfig(samples_per_shard=48, validation_fraction=0.25), tokenizer=TokenizerConfig(vocab_size=160),
        train={"family": "vl-t5", "recipe": "tiny", "overrides": overrides,
               "then": [{"recipe": "tiny-caption", "overrides": overrides}]},
        eval={"tasks": ["captioning"], "split": "validation"})
    first = pipeline_flow(config)
    assert (first["dataset"], first["tokenizer"]) == (dag["data"], dag["tok"])
    pretrained, tuned = (s["model"] for s in first["stages"])
    assert [s["recipe"] for s in first["stages"]] == ["tiny", "tiny-caption"] and first["model"] == tuned
    model = catalog.get(tuned)
    assert model.config["recipe"] == "tiny-caption" and model.metrics["steps"] == 2
    assert pretrained in model.parents and model.parents[:2] == [dag["data"], dag["tok"]]
    teacher = first["teachers"]["region_encoder"]
    assert teacher in catalog.get(pretrained).parents and teacher not in model.parents
    report = catalog.get(first["eval"])
    assert report.parents == [tuned, dag["data"]] and "cider" in report.metrics
    again = pipeline_flow(config)
    assert again["stages"] == [{**s, "cached": True} for s in first["stages"]] and again["eval"] == first["eval"]
    assert set(again["cached"].values()) == {True}
