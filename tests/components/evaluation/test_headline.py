"""The one rule for a run's headline metrics (vlforge.components.evaluation.headline): each task's declared
``TaskSpec.headline`` in task order, never a ``baseline_*`` key, the run's own metrics where no headline was measured."""
from __future__ import annotations

from vlforge.components.evaluation.headline import headline_metrics, untrained_value
from vlforge.components.evaluation.tasks import TASKS

EVAL = {"baseline_i2t_r1": 0.1, "baseline_zs_top1": 0.2, "i2t_r1": 0.5, "i2t_r5": 0.9, "t2i_r1": 0.4, "zs_top1": 0.6,
        "i2t_chance_r1": 0.05, "note": "text"}


def test_each_tasks_declared_headline_in_task_order() -> None:
    assert TASKS["retrieval"].headline == "i2t_r1" and TASKS["zero_shot_classification"].headline == "zs_top1"
    assert headline_metrics(EVAL, ["zero_shot_classification", "retrieval"]) == [("zs_top1", 0.6), ("i2t_r1", 0.5)]
    assert headline_metrics(EVAL, ["retrieval", "retrieval", "no_such_task"]) == [("i2t_r1", 0.5)]
    assert untrained_value(EVAL, "i2t_r1") == 0.1 and untrained_value(EVAL, "t2i_r1") is None


def test_without_a_measured_headline_the_runs_own_metrics_stand_in_never_the_baseline() -> None:
    own = headline_metrics(EVAL, ["captioning"], most=3)  # cider was not measured
    assert own == [("i2t_chance_r1", 0.05), ("i2t_r1", 0.5), ("i2t_r5", 0.9)]
    assert all(not key.startswith("baseline_") for key, _v in headline_metrics(EVAL, []))
    assert headline_metrics(EVAL, ["captioning"], most=0) == []  # the leaderboard: no stand-ins
    assert headline_metrics({"final_loss": 1.5, "steps": 10, "flag": True}, []) == [("final_loss", 1.5), ("steps", 10.0)]
