"""Stages as plain typed Python: sources, crawl, shard, tokenizer, model families, training, evaluation."""
