"""Evaluation tasks: each scores a catalog model on a catalog dataset split and returns metrics + per-sample rows."""
