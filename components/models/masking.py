"""Masking shared by the families' masked-modelling objectives (one implementation each).

- ``mask_tokens``: BERT-style masked language modelling inputs and labels (p=0.15; of the chosen tokens 80% become
  ``<mask>``, 10% a random token, 10% stay), optionally with whole-word masking: a word is chosen or not as a
  whole, so every sub-word piece of a chosen word is masked (ViLT, VLMo; UNIMO and others as they land).
  Word boundaries come from the fast tokenizer's ``word_ids`` (``ImageTextBatch.word_ids``, filled by the
  training loop); without them every token counts as its own word.
- ``random_patch_mask`` / ``patchify`` / ``masked_patch_loss``: masked image modelling by pixel regression on the
  masked patches (VLMo stage 1 in place of BEiT's DALL-E tokens, as ``shared/notes/families.md`` allows).

Each function takes an optional ``torch.Generator``; ``batch_generator`` seeds one from the batch's sample keys, so
a family's random choices (masks, negatives) are a function of (seed, batch): a resumed run draws what the
uninterrupted run drew (the loop replays the same batches), and evaluation losses are reproducible, while batches
that differ (every step of a shuffled stream) still get fresh draws — dynamic masking in practice."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label of a position that is not predicted (cross_entropy's default ignore_index)


def batch_generator(keys: Sequence[str], seed: int) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and the batch's keys in order (stable across processes, unlike hash())."""
    digest = hashlib.blake2b(f"{seed}\n".encode() + "\n".join(keys).encode(), digest_size=8).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def _rand(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=like.device if generator is None else generator.device).to(like.device)


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Iterable[int],
    word_ids: torch.Tensor | None = None,
    p: float = 0.15,
    whole_word: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(masked_input_ids, labels)``; labels are the original ids at chosen positions, ``IGNORE_INDEX`` elsewhere.

    Special tokens and padding are never chosen. Every row with at least one maskable token gets at least one
    chosen word, so the MLM loss is defined for every caption. ``word_ids`` (B, L): the word index of each token,
    negative for special tokens; used only with ``whole_word``."""
    specials = torch.tensor(sorted(set(special_ids)), device=input_ids.device)
    maskable = attention_mask.bool() & ~torch.isin(input_ids, specials)
    bsz, length = input_ids.shape
    positions = torch.arange(length, device=input_ids.device).expand(bsz, length)
    words = word_ids.to(input_ids.device) if (whole_word and word_ids is not None) else positions
    maskable &= words >= 0
    words = words.clamp(min=0, max=length - 1)  # a caption has at most L words within L tokens
    chosen_word = _rand((bsz, length), input_ids, generator) < p  # one draw per word index
    chosen = maskable & chosen_word.gather(1, words)
    # rows where nothing was drawn: choose the word of one random maskable token
    empty = ~chosen.any(dim=1) & maskable.any(dim=1)
    if empty.any():
        score = _rand((bsz, length), input_ids, generator).masked_fill(~maskable, -1.0)
        pick = words.gather(1, score.argmax(dim=1, keepdim=True))
        chosen |= empty[:, None] & maskable & (words == pick)
    labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
    action = _rand((bsz, length), input_ids, generator)
    masked = input_ids.clone()
    masked[chosen & (action < 0.8)] = mask_id
    randomise = chosen & (action >= 0.8) & (action < 0.9)
    low = int(specials.max()) + 1 if specials.numel() else 0  # random replacements are ordinary tokens
    random_ids = (_rand((bsz, length), input_ids, generator) * (vocab_size - low)).long() + low
    masked[randomise] = random_ids[randomise]
    return masked, labels


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) → (B, N, patch_size²·C), patches in row-major order (the order of a ViT's patch embedding)."""
    bsz, channels, height, width = pixel_values.shape
    gh, gw = height // patch_size, width // patch_size
    x = pixel_values[:, :, : gh * patch_size, : gw * patch_size]
    x = x.reshape(bsz, channels, gh, patch_size, gw, patch_size).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(bsz, gh * gw, patch_size * patch_size * channels)


def random_patch_mask(
    batch_size: int, num_patches: int, ratio: float, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A boolean (B, N) mask with exactly ``round(ratio·N)`` (at least one) masked patches per image."""
    count = max(1, round(ratio * num_patches))
    scores = torch.rand((batch_size, num_patches), generator=generator, device=device if generator is None else generator.device)
    idx = scores.argsort(dim=1)[:, :count].to(device)
    mask = torch.zeros((batch_size, num_patches), dtype=torch.bool, device=device)
    mask.scatter_(1, idx, True)
    return mask


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """Mean squared error over the masked patches only (MAE's loss); with ``norm_pix`` each target patch is
    normalised by its own mean and variance, which MAE found gives better representations."""
    if norm_pix:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = F.mse_loss(pred, target, reduction="none").mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp(min=1)
