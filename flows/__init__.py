"""Prefect wiring of the components: one flow per stage and the pipeline flow."""
