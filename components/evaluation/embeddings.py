"""Embedding a dataset split with a dual-encoder family (batched, no grad), shared by retrieval and classification."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from rich.progress import Progress
from vlforge.components.data.loader import ImageTransform, RawSample, decode_image
from vlforge.components.models.registry import Family, Recipe


@torch.no_grad()
def embed_images(family: Family, model: torch.nn.Module, recipe: Recipe, samples: Sequence[RawSample], batch_size: int = 128,
                 progress: Progress | None = None) -> torch.Tensor:
    transform = ImageTransform(recipe.image_size, family.image_mean, family.image_std)
    out = []
    task = progress.add_task("embedding images", total=len(samples)) if progress else None
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        pixels = torch.stack([transform(decode_image(s.image)) for s in chunk])
        out.append(family.encode_images(model, pixels).float())
        if progress is not None:
            progress.advance(task, len(chunk))
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def embed_texts(family: Family, model: torch.nn.Module, recipe: Recipe, tokenizer, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i : i + batch_size]), padding="max_length", truncation=True,
                        max_length=recipe.max_text_length, return_tensors="pt")
        out.append(family.encode_texts(model, enc["input_ids"], enc["attention_mask"]).float())
    return torch.cat(out) if out else torch.empty(0)
