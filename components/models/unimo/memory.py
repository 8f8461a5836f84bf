"""UNIMO's related-sample retrieval by similarity, over a memory of earlier batches.

UNIMO (Li et al., 2021, §2.2) augments each image-text pair with related images and texts retrieved from its
single-modal corpora by similarity (images by visual similarity, texts by semantic similarity) and adds them to the
positives of its cross-modal contrastive loss. There are no separate corpora here, so the corpus is a memory:
``RelatedMemory`` keeps first-in-first-out queues of the contrastive image and caption features of earlier batches
(detached, L2-normalised, the CMCL space), each with its sample's hashed key. For each paired sample, the image
retrieves its ``k`` most similar memory images and the caption its ``k`` most similar memory captions;
``add_related`` appends the retrieved features to the contrastive images and texts and marks them positives:

- a retrieved caption is a positive of every image its query caption is a positive of (the pair's image);
- a retrieved image is a positive of every text that is a positive of its query image (the pair's caption);
- a retrieved image and a retrieved caption of the same memory sample are each other's positives.

The memory features are detached (as MoCo's queue): the retrieved samples pull on the batch's features, not the
other way round. Memory entries of samples in the current batch are never retrieved (a stale copy of a sample is not
a related one). Everything lives in buffers, so the memory is saved with the checkpoint and a resumed run
continues with the memory it had."""
from __future__ import annotations

import torch
from torch import nn


class RelatedMemory(nn.Module):
    """FIFO queues (``size`` rows each) of image and caption features with their samples' keys (-1: empty)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        for side in ("image", "text"):
            self.register_buffer(f"{side}_features", torch.zeros(size, dim))
            self.register_buffer(f"{side}_keys", torch.full((size,), -1, dtype=torch.long))
            self.register_buffer(f"{side}_next", torch.zeros(1, dtype=torch.long))  # the slot the next entry takes

    def features(self, side: str) -> torch.Tensor:
        return getattr(self, f"{side}_features")

    def keys(self, side: str) -> torch.Tensor:
        return getattr(self, f"{side}_keys")

    @torch.no_grad()
    def push(self, side: str, features: torch.Tensor, keys: torch.Tensor) -> None:
        """Enqueue ``features`` (n, D) with ``keys`` (n,), overwriting the oldest entries."""
        size = self.features(side).shape[0]
        features, keys = features.detach()[-size:], keys[-size:]
        nxt = getattr(self, f"{side}_next")
        slots = (int(nxt) + torch.arange(features.shape[0], device=nxt.device)) % size
        self.features(side)[slots] = features.to(self.features(side).dtype)
        self.keys(side)[slots] = keys.to(self.keys(side).device)
        nxt.fill_((int(nxt) + features.shape[0]) % size)

    @torch.no_grad()
    def retrieve(self, side: str, queries: torch.Tensor, k: int, exclude: torch.Tensor) -> torch.Tensor:
        """(queries, memory) bool: each query's ``k`` most similar filled memory entries (fewer where fewer are
        filled), leaving out the entries whose key is in ``exclude``."""
        keys = self.keys(side)
        selected = torch.zeros(queries.shape[0], keys.shape[0], dtype=torch.bool, device=queries.device)
        usable = (keys >= 0) & ~torch.isin(keys, exclude.to(keys.device))
        k = min(k, int(usable.sum()))
        if k == 0 or queries.shape[0] == 0:
            return selected
        sims = (queries.detach().float() @ self.features(side).t()).masked_fill(~usable, float("-inf"))
        selected.scatter_(1, sims.topk(k, dim=1).indices, True)
        return selected


def add_related(memory: RelatedMemory, img: torch.Tensor, txt: torch.Tensor, pos: torch.Tensor,
                image_keys: torch.Tensor, text_keys: torch.Tensor, image_query: torch.Tensor,
                text_query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The contrastive images, texts and positives with the retrieved related samples appended (see the module
    docstring): ``img`` (N, D) / ``txt`` (M, D) features, ``pos`` (N, M), the samples' keys (-1: a rewrite, which
    is never a query) and which rows query the memory (the paired samples)."""
    exclude = torch.cat([image_keys, text_keys])
    exclude = exclude[exclude >= 0]
    qi, qt = image_query.nonzero().squeeze(1), text_query.nonzero().squeeze(1)
    sel_i = memory.retrieve("image", img[qi], k, exclude)
    sel_t = memory.retrieve("text", txt[qt], k, exclude)
    used_i, used_t = sel_i.any(0).nonzero().squeeze(1), sel_t.any(0).nonzero().squeeze(1)
    posf = pos.float()
    img_to_related_txt = (posf[:, qt] @ sel_t[:, used_t].float()) > 0  # (N, related texts)
    related_img_to_txt = (sel_i[:, used_i].float().t() @ posf[qi]) > 0  # (related images, M)
    same_sample = memory.keys("image")[used_i][:, None] == memory.keys("text")[used_t][None]
    pos = torch.cat([torch.cat([pos, img_to_related_txt], 1), torch.cat([related_img_to_txt, same_sample], 1)], 0)
    img = torch.cat([img, memory.features("image")[used_i].to(img.dtype)])
    txt = torch.cat([txt, memory.features("text")[used_t].to(txt.dtype)])
    return img, txt, pos
