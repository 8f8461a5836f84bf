"""Leaderboard flow: the catalog's eval reports -> leaderboard rows, the HTML page and a Prefect table artifact.

    vlforge leaderboard --publish
"""
from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact
from vlforge.components.evaluation.leaderboard import leaderboard_rows, write_html
from vlforge.flows.common import open_catalog

from vlforge.settings import vlforge_home


@flow(name="leaderboard")
def leaderboard_flow() -> dict:
    rows = leaderboard_rows(open_catalog())
    page = write_html(rows, vlforge_home() / "leaderboard.html")
    create_table_artifact(key="vlforge-leaderboard", table=rows,
                          description=f"headline metric per model x task, untrained baseline beside it; page: {page}")
    return {"rows": rows, "html": str(page)}


if __name__ == "__main__":
    leaderboard_flow.serve(name="leaderboard", cron="0 * * * *")
