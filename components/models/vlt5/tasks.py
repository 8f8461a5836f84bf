"""VL-T5 / VL-BART's text-to-text tasks: each turns a batch into (encoder prompt ids, decoder label ids).

Every task is conditional text generation with a task prefix, the paper's recipe (Cho et al. 2021, section 3.2 and
Table 1; the prefixes of ``j-min/VL-T5`` ``pretrain_data.py``):
- ``lm`` multimodal LM. VL-T5: T5 span corruption, ``"span prediction: a red <mask> left of a blue square"`` ->
  ``"<mask> circle"`` (the masked spans, each after its sentinel). VL-BART: text infilling,
  ``"denoise text: ..."`` -> the whole caption. Sentinels: T5's numbered ``<extra_id_k>`` when the tokenizer has
  them (a released T5's, as the paper), else vlforge's one ``<mask>`` token for every span; spans are filled in
  order. Noise density 0.15, mean span length 3 (T5's
  ``random_spans_noise_mask``: kept and masked runs alternate, starting with a kept run).
- ``caption`` ``"caption:"`` -> the caption (what ``generate_texts`` prompts with when given no prompt).
- ``vqa`` ``"question: <q> answer:"`` -> the answer, the very input the evaluation's VQA-by-generation uses
  (``components/evaluation/vqa.py``), with questions from ``scene_tasks.vqa_questions``.
- ``itm`` ``"image text match: <caption>"`` -> ``"true"`` / ``"false"``; with p=0.5 the caption is another
  sample's caption that differs from this sample's (a real mismatch).
- ``grounding`` (the paper's "visual grounding"/refer) ``"visual grounding: a red circle"`` -> the region token
  ``<vis_extra_id_k>`` of the patch that holds the object's centre (boxes from the scene facts).
- ``grounded_caption`` ``"caption region: <vis_extra_id_k>"`` -> the phrase of the object at region ``k``.
The facts-based tasks (vqa, grounding, grounded_caption) need ``batch.facts()``: a sample without an item for the
task keeps its label row ignored (-100), and a batch where no sample has one does not offer the task.

Prompts are packed to a fixed length (``max_prompt_length``): the regions follow the text in the encoder, and a
fixed text length keeps their positions (BART) and relative distances (T5) the same in training and generation."""
from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from vlforge.components.models.heads import not_negative_mask, sample_negatives
from vlforge.components.models.vlt5.modeling import region_of_point
from vlforge.components.sources.scene_tasks import grounding_phrases, vqa_questions
from vlforge.errors import UserError

TASKS: tuple[str, ...] = ("lm", "caption", "vqa", "itm", "grounding", "grounded_caption")
LM_PREFIX = {"t5": "span prediction:", "bart": "denoise text:"}
CAPTION_PROMPT = "caption:"
ITM_PREFIX = "image text match:"
ITM_ANSWERS = ("true", "false")
GROUNDING_PREFIX = "visual grounding:"
GROUNDED_CAPTION_PREFIX = "caption region:"
IGNORE = -100

Target = str | list[int] | None  # text, raw token ids (region tokens), or None: this sample sits the task out


def vqa_prompt(question: str) -> str:
    """The VQA input, exactly as ``components/evaluation/vqa.py`` prompts a generative family."""
    return f"question: {question} answer:"


def region_token(k: int) -> str:
    """How a region token reads in generated text (the paper's ``<vis_extra_id_k>``)."""
    return f"<vis_extra_id_{k}>"


# ------------------------------------------------------------------------------------------ span corruption
def _segments(total: int, parts: int, generator: torch.Generator) -> list[int]:
    """A random split of ``total`` into ``parts`` positive lengths."""
    if parts <= 1:
        return [total]
    cuts = sorted((torch.randperm(total - 1, generator=generator)[: parts - 1] + 1).tolist())
    bounds = [0, *cuts, total]
    return [b - a for a, b in itertools.pairwise(bounds)]


def random_spans_noise_mask(n: int, density: float, mean_span: float, generator: torch.Generator) -> list[bool]:
    """T5's span selection over ``n`` words: ``round(n * density)`` masked words (at least one, and at least one
    kept when n > 1) in ``round(masked / mean_span)`` spans, kept and masked runs alternating from a kept run."""
    if n <= 1:
        return [True] * n
    n_noise = min(max(1, round(n * density)), n - 1)
    n_spans = max(1, min(round(n_noise / mean_span), n_noise, n - n_noise))
    noise, keep = _segments(n_noise, n_spans, generator), _segments(n - n_noise, n_spans, generator)
    mask: list[bool] = []
    for k, m in zip(keep, noise):
        mask += [False] * k + [True] * m
    return mask


T5_SENTINEL = "<extra_id_{}>"
T5_SENTINELS = 100  # a released T5 tokenizer's <extra_id_0> ... <extra_id_99>


def span_sentinels(tokenizer: Any) -> tuple[str, ...]:
    """The tokens that stand for masked spans: T5's numbered ``<extra_id_k>`` where the tokenizer has them (a
    released T5's), else its one mask token for every span (vlforge's own BPE), else none."""
    unknown = getattr(tokenizer, "unk_token_id", None)
    numbered = []
    for k in range(T5_SENTINELS):
        token = T5_SENTINEL.format(k)
        found = tokenizer.convert_tokens_to_ids(token)
        if found is None or found == unknown:
            break
        numbered.append(token)
    if numbered:
        return tuple(numbered)
    return (tokenizer.mask_token,) if getattr(tokenizer, "mask_token", None) else ()


def check_sentinels(who: str, tokenizer: Any) -> None:
    """Preflight: span corruption needs T5's ``<extra_id_k>`` or a mask token."""
    if not span_sentinels(tokenizer):
        raise UserError(f"{who}: the tokenizer has neither T5's <extra_id_0> sentinels nor a mask token, which span "
                        "corruption needs")


def corrupt(caption: str, sentinels: str | Sequence[str], density: float, mean_span: float,
            generator: torch.Generator, style: Literal["t5", "bart"]) -> tuple[str, str]:
    """The corrupted caption (masked span k -> sentinel k, the last sentinel for every span past them: one mask
    token is every span's) and the target: the masked spans, each after its sentinel (T5 span corruption), or
    the whole caption (BART text infilling)."""
    marks = (sentinels,) if isinstance(sentinels, str) else tuple(sentinels)
    words = caption.split()
    noise = random_spans_noise_mask(len(words), density, mean_span, generator)
    source: list[str] = []
    target: list[str] = []
    spans = 0
    for i, (word, masked) in enumerate(zip(words, noise)):
        if masked and (i == 0 or not noise[i - 1]):
            mark = marks[min(spans, len(marks) - 1)]
            spans += 1
            source.append(mark)
            target.append(mark)
        if masked:
            target.append(word)
        else:
            source.append(word)
    return " ".join(source), (" ".join(target) if style == "t5" else " ".join(words))


def fill_spans(source: str, target: str, sentinels: str | Sequence[str]) -> str:
    """Put T5 span-corruption target spans back in place of the source's sentinels (in order)."""
    marks = (sentinels,) if isinstance(sentinels, str) else tuple(sentinels)
    split = re.compile("|".join(re.escape(m) for m in sorted(set(marks), key=len, reverse=True)))
    spans = [s.strip() for s in split.split(target)][1:]
    parts = split.split(source)
    if len(parts) != len(spans) + 1:
        raise ValueError(f"{len(parts) - 1} sentinels in the source but {len(spans)} spans in the target")
    out = parts[0]
    for span, rest in zip(spans, parts[1:]):
        out += span + rest
    return " ".join(out.split())


# ------------------------------------------------------------------------------------------------ encoding
@dataclass
class TaskContext:
    """What the task builders need beyond the batch."""

    tokenizer: Any
    special_ids: dict[str, int]
    max_prompt_length: int
    max_target_length: int
    grid: int  # regions per side
    text_vocab: int  # region token k has id text_vocab + k
    style: Literal["t5", "bart"]
    span_density: float = 0.15
    mean_span_length: float = 3.0
    itm_negative_prob: float = 0.5

    def words(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of ``texts`` without special tokens added (the ``<mask>`` token inside a text is kept)."""
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]]


def pack_prompts(ctx: TaskContext, bodies: Sequence[Sequence[int]], suffixes: Sequence[Sequence[int]] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``[bos] body suffix [eos]`` per row, the body cut to fit, right-padded to exactly ``max_prompt_length``."""
    bos, eos, pad = ctx.special_ids.get("bos"), ctx.special_ids["eos"], ctx.special_ids.get("pad", 0)
    rows = []
    for i, body in enumerate(bodies):
        suffix = list(suffixes[i]) if suffixes is not None else []
        head = [bos] if bos is not None else []
        room = max(0, ctx.max_prompt_length - len(head) - len(suffix) - 1)
        rows.append((head + list(body)[:room] + suffix + [eos])[: ctx.max_prompt_length])
    ids = torch.full((len(rows), ctx.max_prompt_length), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def encode_prompts(ctx: TaskContext, texts: Sequence[str], suffixes: Sequence[Sequence[int]] | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    return pack_prompts(ctx, ctx.words(texts), suffixes)


def strip_specials(ctx: TaskContext, ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """The text tokens of already-tokenised rows (bos, eos and padding removed)."""
    drop = {ctx.special_ids.get("bos"), ctx.special_ids.get("eos"), ctx.special_ids.get("pad")}
    return [[t for t in row[m.bool()].tolist() if t not in drop] for row, m in zip(ids.cpu(), mask.cpu())]


def prefixed(ctx: TaskContext, prefix: str | list[int], ids: torch.Tensor, mask: torch.Tensor,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenised captions behind a task prefix (ITM in training and in ``score_pairs`` build the same ids)."""
    head = ctx.words([prefix])[0] if isinstance(prefix, str) else list(prefix)
    return pack_prompts(ctx, [head + body for body in strip_specials(ctx, ids, mask)])


def encode_targets(ctx: TaskContext, targets: Sequence[Target]) -> torch.Tensor:
    """Decoder labels: ``target [eos]`` (no bos: the decoder starts from its start token), -100 padding; a None
    target gives an all -100 row."""
    eos = ctx.special_ids["eos"]
    texts = [t for t in targets if isinstance(t, str)]
    encoded = iter(ctx.words(texts)) if texts else iter(())
    rows: list[list[int]] = []
    for t in targets:
        if t is None:
            rows.append([])
        else:
            body = next(encoded) if isinstance(t, str) else list(t)
            rows.append(body[: ctx.max_target_length - 1] + [eos])
    width = max(1, max(len(r) for r in rows))
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            labels[i, : len(row)] = torch.tensor(row)
    return labels


# ---------------------------------------------------------------------------------------------- task items
def groundable_objects(key: str, facts: dict | None) -> list[tuple[str, tuple[float, float, float, float]]]:
    """(phrase, box) of the objects their colour and shape alone pick out: ``scene_tasks.grounding_phrases``
    (2-3 object scenes), or the only object of a one-object scene."""
    if not facts:
        return []
    items = grounding_phrases(key, facts)
    if items:
        return [(g.phrase, g.boxes[g.target]) for g in items]
    objects = facts.get("objects") or []
    if len(objects) == 1:
        return [(f"a {objects[0]['color']} {objects[0]['shape']}", tuple(objects[0]["bbox"]))]
    return []


def _pick(items: Sequence, generator: torch.Generator):
    return items[int(torch.randint(len(items), (1,), generator=generator))] if items else None


def box_region(box: Sequence[float], grid: int) -> int:
    """The region (patch) that holds the centre of a normalised ``x0, y0, x1, y1`` box."""
    return region_of_point((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, grid)


def itm_partners(captions: Sequence[str], keys: Sequence[str], prob: float, generator: torch.Generator,
                 ) -> tuple[list[int], list[bool]]:
    """For each sample, whose caption it is paired with, and whether that is its own (matched). A sample is
    mismatched with probability ``prob``, with a caption of another sample that differs from its own."""
    bsz = len(captions)
    forbid = not_negative_mask(keys, captions)
    partner = sample_negatives(torch.zeros(bsz, bsz), "random", forbid, generator)
    coin = torch.rand(bsz, generator=generator)
    swap = (coin < prob) & (partner >= 0)
    return [int(partner[i]) if swap[i] else i for i in range(bsz)], [not bool(s) for s in swap]


def supported_tasks(captions: Sequence[str], keys: Sequence[str], facts: Sequence[dict | None]) -> set[str]:
    """The tasks a batch offers: caption tasks when every sample has a caption (ITM: two distinct ones), the
    facts tasks when some sample has an item for them."""
    out: set[str] = set()
    if captions and all(c.strip() for c in captions):
        out |= {"lm", "caption"}
        if len(set(captions)) >= 2:
            out.add("itm")
    if any(f and vqa_questions(k, f) for k, f in zip(keys, facts)):
        out.add("vqa")
    if any(groundable_objects(k, f) for k, f in zip(keys, facts)):
        out |= {"grounding", "grounded_caption"}
    return out


def build_task(task: str, ctx: TaskContext, captions: Sequence[str], keys: Sequence[str],
               facts: Sequence[dict | None], caption_ids: torch.Tensor, caption_mask: torch.Tensor,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prompt ids, prompt mask, labels) of ``task`` for the batch, on the CPU."""
    bsz = len(captions)
    suffixes: list[list[int]] | None = None
    if task == "lm":
        sentinels = span_sentinels(ctx.tokenizer)
        pairs = [corrupt(c, sentinels, ctx.span_density, ctx.mean_span_length, generator, ctx.style) for c in captions]
        prompts = [f"{LM_PREFIX[ctx.style]} {src}" for src, _ in pairs]
        targets: list[Target] = [tgt for _, tgt in pairs]
    elif task == "caption":
        prompts, targets = [CAPTION_PROMPT] * bsz, list(captions)
    elif task == "vqa":
        prompts, targets = [], []
        for key, f in zip(keys, facts):
            q = _pick(vqa_questions(key, f), generator) if f else None
            prompts.append(vqa_prompt(q.question) if q else CAPTION_PROMPT)
            targets.append(q.answer if q else None)
    elif task == "itm":
        partner, matched = itm_partners(captions, keys, ctx.itm_negative_prob, generator)
        ids, mask = prefixed(ctx, ITM_PREFIX, caption_ids[partner], caption_mask[partner])
        return ids, mask, encode_targets(ctx, [ITM_ANSWERS[0] if m else ITM_ANSWERS[1] for m in matched])
    elif task in ("grounding", "grounded_caption"):
        prompts, targets, suffixes = [], [], []
        for key, f in zip(keys, facts):
            item = _pick(groundable_objects(key, f), generator)
            region = ctx.text_vocab + box_region(item[1], ctx.grid) if item else None
            if item is None:
                prompts.append(CAPTION_PROMPT)
                suffixes.append([])
                targets.append(None)
            elif task == "grounding":
                prompts.append(f"{GROUNDING_PREFIX} {item[0]}")
                suffixes.append([])
                targets.append([region])
            else:
                prompts.append(GROUNDED_CAPTION_PREFIX)
                suffixes.append([region])
                targets.append(item[0])
    else:
        raise ValueError(f"unknown VL-T5 task '{task}' (tasks: {', '.join(TASKS)})")
    ids, mask = encode_prompts(ctx, prompts, suffixes)
    return ids, mask, encode_targets(ctx, targets)
