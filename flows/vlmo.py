"""VLMo stagewise flow: three chained train runs on one catalog dataset, each continuing from the previous model
(``init_from: catalog:REF``, so each model's parents include the previous stage's model):
stage 1 image-only MIM -> stage 2 text-only MLM (attention and V-FFN frozen) -> stage 3 image-text ITC/ITM/MLM.
Every stage is a cached train task, so a re-run only trains what changed.

    python -c "from vlforge.flows.vlmo import vlmo_stagewise_flow; print(vlmo_stagewise_flow('shapes'))"
"""
from __future__ import annotations

from typing import Any

from prefect import flow
from vlforge.components.tokenizer import TokenizerConfig
from vlforge.flows.train import train_flow


@flow(name="vlmo-stagewise")
def vlmo_stagewise_flow(data: str, recipe: str = "tiny", overrides: dict[str, Any] | None = None,
                        tokenizer: str | None = None, tokenizer_config: TokenizerConfig | None = None,
                        ray_address: str | None = None) -> dict:
    """Train VLMo stages 1, 2, 3 with ``recipe`` (its ``stage`` field set per stage); returns every artifact id,
    ``model`` being the final (stage-3) model."""
    result: dict = {"cached": {}}
    previous: str | None = None
    for stage in (1, 2, 3):
        stage_overrides = {**(overrides or {}), "stage": stage}
        if previous is not None:
            stage_overrides["init_from"] = f"catalog:{previous}"
        out = train_flow("vlmo", data, recipe, stage_overrides, tokenizer, tokenizer_config, ray_address)
        tokenizer, previous = out["tokenizer"], out["model"]
        result.update(dataset=out["dataset"], tokenizer=tokenizer)
        result[f"model_stage{stage}"] = previous
        result["cached"][f"model_stage{stage}"] = out["cached"]["model"]
    result["model"] = previous
    return result
