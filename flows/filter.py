"""Filter flow: a dataset -> a filtered dataset (dedup, caption/image rules, CLIP score), with its card published.

    vlforge run filter --data shapes --config filter.yaml
"""
from __future__ import annotations

from prefect import flow
from vlforge.components.data.filter import FilterConfig
from vlforge.components.stages import filter_plan
from vlforge.flows.common import open_catalog, run_cached
from vlforge.flows.ingest import publish_dataset_card
from vlforge.flows.stages import filter_task


@flow(name="filter", log_prints=True)
def filter_flow(data: str, config: FilterConfig, ray_address: str | None = None) -> dict:
    key, dataset, _ = filter_plan(data, config, open_catalog())
    filtered, cached = run_cached(filter_task, key, data=dataset.id, config=config, ray_address=ray_address)
    publish_dataset_card(filtered)
    return {"dataset": filtered, "cached": {"dataset": cached}}


if __name__ == "__main__":
    filter_flow.serve(name="filter", parameters={"data": "shapes", "config": FilterConfig()})
