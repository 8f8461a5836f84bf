"""The evaluation task registry: what each task needs from a dataset and from a model family, in one place.

A family opts into tasks by listing *capabilities* in ``Family.capabilities`` (``components/models/registry.py``)
and implementing the methods a capability names (``CAPABILITIES`` below). A dataset offers *data needs*
(``DATA_NEEDS``) by what its samples carry. ``check_fit`` turns a task that does not fit into one ``UserError``
line naming the gap; ``suite_tasks`` picks every task of a suite that fits. The eval stage
(``components/stages/eval.py``) calls these before any work, and ``runner.evaluate`` runs the tasks on an
``EvalContext`` that holds the loaded model, its tokenizer and the split's samples, and shares image embeddings
between tasks."""
from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import torch
from PIL import Image
from torch import nn
from vlforge.components.data.loader import ImageTransform, RawSample, decode_image
from vlforge.components.models.capabilities import PairScorer, TextGenerator, capability
from vlforge.components.models.registry import Family, Recipe
from vlforge.components.sources.tables import read_parquet

from vlforge.errors import UserError

if TYPE_CHECKING:
    from vlforge.components.evaluation.nlu_probe import TextEncoder

# ------------------------------------------------------------------------------------------- capabilities
# name -> what a family offering it implements. Families list the names in ``Family.capabilities``.
CAPABILITIES: dict[str, str] = {
    "retrieval": "dual encoder: encode_images(model, pixels) and encode_texts(model, ids, mask), L2-normalised, one space",
    "zero_shot_classification": "classes scored as prompts (implied by retrieval or itm)",
    "itm": "image-text matching: score_pairs(model, pixels, ids, mask[, tokenizer]) -> (B,) match log-odds of pair i "
           "(image i, text i); a family that declares a tokenizer parameter gets the model's tokenizer",
    "generate": "text generation from an image: generate_texts(model, pixels, tokenizer, prompts|None, max_new_tokens) -> list[str]",
    "image_features": "frozen image features for a linear probe: encode_images (implied by retrieval)",
    "pair_scoring": "a score for any (image, text) pair: from retrieval (cosine) or itm (logit)",
    "text_features": "a trainable text representation for the NLU probe: text_features(model, ids, mask, pixels) -> "
                     "(B, D), pixels a black image where the model needs one (implied by retrieval: encode_texts)",
    "fused_features": "the fusion encoder's pooled vector of each pair: fused_features(model, pixels, ids, mask) -> (B, D), "
                      "differentiable, for a head fine-tuned on it (NLVR2 fine-tuning)",
    "vqa_answer": "a trained VQA answer head: answer_questions(model, pixels, questions, tokenizer) -> list[str], the "
                  "answer to question i about image i",
    "few_shot": "interleaved few-shot generation: few_shot_generate(model, shots, query_pixels, query_prompt, "
                "tokenizer, max_new_tokens) -> str, shots a list of (pixels (3, H, W), text)",
    "detection": "object detection: detect_objects(model, pixels) -> per image {boxes (Q, 4) normalised x0, y0, x1, "
                 "y1; scores (Q,); labels: Q class names}",
}
# a capability a family lists brings these with it
IMPLIES: dict[str, frozenset[str]] = {
    "retrieval": frozenset({"zero_shot_classification", "image_features", "pair_scoring", "text_features"}),
    "itm": frozenset({"zero_shot_classification", "pair_scoring"}),
}
# name -> what a dataset split must carry
DATA_NEEDS: dict[str, str] = {
    "captions": "a non-empty caption per sample",
    "labels": "a class label on the samples (at least two classes)",
    "train_labels": "class labels in a train split apart from the evaluated one (the linear probe fits on it: evaluate on validation or test)",
    "facts": "scene facts per sample (builtin:shapes datasets)",
    "boxes": "object boxes in every sample's scene facts (builtin:shapes datasets)",
    "vqav2": "VQAv2 questions with their human answers on every sample (a vqav2: dataset)",
    "nlvr2": "NLVR2 image pairs with their statements (an nlvr2: dataset)",
    "nlvr2_train": "NLVR2 statements in a train split apart from the evaluated one (the fine-tuning fits on them: "
                   "ingest train.json and dev.json concatenated into one file and evaluate on validation or test)",
}
# a text-only dataset (a glue: task, manifest format "text") offers "text_only": it fits these tasks and no other
TEXT_TASKS = frozenset({"nlu_probe"})


def family_offers(family: Family) -> frozenset[str]:
    caps = set(family.capabilities)
    for cap in list(caps):
        caps |= IMPLIES.get(cap, frozenset())
    return frozenset(caps)


def dataset_offers(dataset_dir: Path, split: str) -> frozenset[str]:
    """What a dataset split carries, read from its ``samples.parquet`` index (cheap: no shard is opened)."""
    path = dataset_dir / "samples.parquet"
    columns = [c for c in ("split", "caption", "label", "facts", "vqa", "nlvr2_pair") if c in pq.read_schema(path).names]
    index = [{"caption": "", "label": "", "facts": "", "split": "", "vqa": None, "nlvr2_pair": None} | r
             for r in read_parquet(path, columns=columns).to_pylist()]
    rows = index if split == "all" else [r for r in index if r["split"] == split]
    offers: set[str] = set()
    manifest = dataset_dir / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("format") == "text":
        offers.add("text_only")
    if rows and all((r["caption"] or "").strip() for r in rows):
        offers.add("captions")
    if len({r["label"] for r in rows if r["label"]}) >= 2:
        offers.add("labels")
    if split not in ("train", "all") and len({r["label"] for r in index if r["split"] == "train" and r["label"]}) >= 2:
        offers.add("train_labels")
    if rows and all(r["facts"] for r in rows):
        offers.add("facts")
        if all(_facts_have_boxes(r["facts"]) for r in rows):
            offers.add("boxes")
    if rows and all(r["vqa"] for r in rows):
        offers.add("vqav2")
    if rows and all(r["nlvr2_pair"] for r in rows):
        offers.add("nlvr2")
    if split not in ("train", "all") and any(r["nlvr2_pair"] for r in index if r["split"] == "train"):
        offers.add("nlvr2_train")
    return frozenset(offers)


def _facts_have_boxes(facts: str) -> bool:
    try:
        objects = json.loads(facts).get("objects")
    except (TypeError, ValueError, AttributeError):
        return False
    return bool(objects) and all(isinstance(o, dict) and len(o.get("bbox") or ()) == 4 for o in objects)


# ------------------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class TaskSpec:
    """One evaluation task. ``model_any`` lists alternatives: the model must offer every capability of one."""

    name: str
    description: str
    data: frozenset[str]
    model_any: tuple[frozenset[str], ...]
    headline: str  # the metric the leaderboard shows
    run: str  # "module:function" taking an EvalContext, returning a TaskOutput
    # stand in, in order, where a run did not measure ``headline`` (the NLU probe on STS-B, a regression: no accuracy)
    other_headlines: tuple[str, ...] = ()

    @property
    def headlines(self) -> tuple[str, ...]:
        return (self.headline, *self.other_headlines)


def _spec(name: str, description: str, data: set[str], model_any: list[set[str]], headline: str, run: str,
          other_headlines: tuple[str, ...] = ()) -> TaskSpec:
    return TaskSpec(name, description, frozenset(data), tuple(frozenset(m) for m in model_any), headline,
                    f"vlforge.components.evaluation.{run}", other_headlines)


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    _spec("retrieval", "zero-shot image<->text retrieval, R@1/5/10", {"captions"}, [{"retrieval"}], "i2t_r1",
          "retrieval:run_retrieval"),
    _spec("zero_shot_classification", "labels scored as prompt templates, ensembled", {"labels"},
          [{"zero_shot_classification", "pair_scoring"}], "zs_top1", "classification:run_zero_shot"),
    _spec("linear_probe", "logistic regression on frozen image features (fit on train)", {"labels", "train_labels"},
          [{"image_features"}], "probe_top1", "linear_probe:run_linear_probe"),
    _spec("itm", "image-text matching on true and swapped captions (a dual encoder: its cosine similarity as the "
          "score, pair ranking only)", {"captions"}, [{"itm"}, {"retrieval"}], "itm_accuracy", "itm:run_itm",
          ("itm_pair_accuracy",)),
    _spec("vqa", "questions from scene facts (colour, shape, count, position, yes/no)", {"facts"},
          [{"vqa_answer"}, {"pair_scoring"}, {"generate"}], "vqa_accuracy", "vqa:run_vqa"),
    _spec("nlvr", "true/false statements about a pair of scenes", {"facts"}, [{"pair_scoring"}], "nlvr_accuracy",
          "nlvr:run_nlvr"),
    _spec("grounding", "pick the object a phrase describes (boxes from scene facts)", {"facts"}, [{"pair_scoring"}],
          "grounding_accuracy", "grounding:run_grounding"),
    _spec("detection", "object detection on the scene facts' boxes (class: the shape), COCO box mAP by pycocotools",
          {"boxes"}, [{"detection"}], "det_map", "detection:run_detection"),
    _spec("nlu_probe", "fine-tune the text side on text-only classification or STS-B regression (black image where "
          "needed)", {"labels", "train_labels"}, [{"text_features"}], "nlu_accuracy", "nlu_probe:run_nlu_probe",
          ("glue_score",)),
    _spec("vqa_few_shot", "VQA by interleaved few-shot generation (k solved examples in the prompt)", {"facts"},
          [{"few_shot"}], "vqa_few_shot_accuracy", "vqa:run_vqa_few_shot"),
    _spec("captioning", "generated captions against the references: BLEU-1..4, METEOR (with Java), ROUGE-L, CIDEr-D as pycocoevalcap", {"captions"}, [{"generate"}],
          "cider", "captioning:run_captioning"),
    _spec("vqav2", "VQAv2 questions, official accuracy over ten human answers", {"vqav2"},
          [{"vqa_answer"}, {"generate"}, {"pair_scoring"}], "vqa_accuracy", "vqav2:run_vqav2"),
    _spec("nlvr2", "NLVR2 statements about pairs of photographs: accuracy and consistency", {"nlvr2"},
          [{"pair_scoring"}], "nlvr2_accuracy", "nlvr2:run_nlvr2"),
    _spec("nlvr2_finetune", "NLVR2 as the fusion papers measure it: the two pooled pairs concatenated, a head "
          "fine-tuned on the train split's statements", {"nlvr2", "nlvr2_train"}, [{"fused_features"}],
          "nlvr2_finetune_accuracy", "nlvr2_finetune:run_nlvr2_finetune"),
)}
SUITES: dict[str, tuple[str, ...]] = {"default": tuple(TASKS)}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise UserError(f"unknown evaluation task '{name}' (tasks: {', '.join(TASKS)})")
    return TASKS[name]


def fit_gap(spec: TaskSpec, family: Family, data: frozenset[str], data_name: str = "the dataset") -> str | None:
    """Why ``spec`` cannot run on this family and data, or None when it can."""
    offers = family_offers(family)
    if not any(need <= offers for need in spec.model_any):
        wanted = " or ".join("+".join(sorted(n)) for n in spec.model_any)
        return f"family '{family.name}' lacks capability {wanted} that task '{spec.name}' needs"
    if "text_only" in data and spec.name not in TEXT_TASKS:
        return f"dataset '{data_name}' is text-only (no images), and task '{spec.name}' needs images"
    missing = sorted(spec.data - data)
    if missing:
        return f"dataset '{data_name}' lacks {'; '.join(DATA_NEEDS[m] for m in missing)}, which task '{spec.name}' needs"
    return None


def check_fit(tasks: Sequence[str], family: Family, data: frozenset[str], data_name: str) -> None:
    for name in tasks:
        gap = fit_gap(get_task(name), family, data, data_name)
        if gap is not None:
            raise UserError(gap)


def suite_tasks(suite: str, family: Family, data: frozenset[str]) -> tuple[list[str], dict[str, str]]:
    """The tasks of ``suite`` that fit, and for each left out, why."""
    if suite not in SUITES:
        raise UserError(f"unknown suite '{suite}' (suites: {', '.join(SUITES)})")
    fit, skipped = [], {}
    for name in SUITES[suite]:
        gap = fit_gap(TASKS[name], family, data)
        if gap is None:
            fit.append(name)
        else:
            skipped[name] = gap
    return fit, skipped


# ------------------------------------------------------------------------------------------------ running
@dataclass
class TaskOutput:
    metrics: dict[str, float]
    rows: dict[str, list] | None = None  # per-sample outputs (one parquet per task)
    plots: dict[str, Callable[[Path], None]] = field(default_factory=dict)  # file name -> writer
    notes: dict[str, str] = field(default_factory=dict)  # words beside the numbers (report.json), never metrics


@dataclass
class EvalContext:
    """A loaded model and the samples of one split; scoring helpers shared by every task. Batching and device
    placement happen here and nowhere else: the model moves to ``device`` once, ``pixels`` and ``tokens`` hand
    tasks batches already there, and embeddings and scores come back on the CPU, as float32."""

    family: Family
    model: nn.Module
    recipe: Recipe
    tokenizer: Any
    samples: list[RawSample]
    train_samples: Callable[[], list[RawSample]] = list
    batch_size: int = 128
    manifest: dict = field(default_factory=dict)  # the dataset's manifest: its source's classnames, templates, ...
    # zero-shot classification's eval-time overrides (``vlforge run eval --classnames/--templates``): dataset class
    # -> the name its prompts use, in class order; the templates
    classnames: dict[str, str] | None = None
    templates: tuple[str, ...] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # the task formats the model (or a model it started from) saw in training (``registry.model_seen_formats``):
    # a metric is called zero-shot only where its format is not among them
    seen_formats: frozenset[str] = frozenset()
    # the text encoder the model's text side started from, which the NLU probe compares it with (``nlu_probe``)
    text_encoder: TextEncoder | None = None
    _image_emb: torch.Tensor | None = None
    _images: list[Image.Image] | None = None

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        self.model = self.model.to(self.device)

    @property
    def offers(self) -> frozenset[str]:
        return family_offers(self.family)

    @property
    def transform(self) -> ImageTransform:
        return self.family.image_transform(self.recipe)

    def images(self) -> list[Image.Image]:
        if self._images is None:
            self._images = [decode_image(s.image) for s in self.samples]
        return self._images

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        t = self.transform
        return torch.stack([t(im) for im in images]).to(self.device)

    def tokens(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.recipe.max_text_length,
                             return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        out = [self.family.encode_images(self.model, self.pixels(images[i : i + self.batch_size])).float().cpu()
               for i in range(0, len(images), self.batch_size)]
        return torch.cat(out) if out else torch.empty(0)

    def image_embeddings(self) -> torch.Tensor:
        """Embeddings of the split's images, computed once for every task."""
        if self._image_emb is None:
            self._image_emb = self.embed_images(self.images())
        return self._image_emb

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), 2 * self.batch_size):
            ids, mask = self.tokens(texts[i : i + 2 * self.batch_size])
            out.append(self.family.encode_texts(self.model, ids, mask).float().cpu())
        return torch.cat(out) if out else torch.empty(0)

    @torch.no_grad()
    def score_pairs(self, images: Sequence[Image.Image], texts: Sequence[str], pairs: Sequence[tuple[int, int]],
                    image_emb: torch.Tensor | None = None, head: str | None = None) -> torch.Tensor:
        """Score ``(image index, text index)`` pairs: cosine similarity for a dual encoder, the ITM logit otherwise
        (``head="itm"`` insists on the matching head). Higher means the text fits the image better; only
        comparisons within one image are meaningful."""
        if not pairs:
            return torch.empty(0)
        if "retrieval" in self.offers and head != "itm":
            img = image_emb if image_emb is not None else self.embed_images(images)
            uniq = sorted({t for _, t in pairs})
            txt = self.embed_texts([texts[t] for t in uniq])
            where = {t: k for k, t in enumerate(uniq)}
            i = torch.tensor([p[0] for p in pairs])
            j = torch.tensor([where[p[1]] for p in pairs])
            return (img[i] * txt[j]).sum(dim=-1)
        if "itm" in self.offers:
            scorer = capability(self.family, PairScorer)
            out = []
            for k in range(0, len(pairs), self.batch_size):
                chunk = pairs[k : k + self.batch_size]
                ids, mask = self.tokens([texts[t] for _, t in chunk])
                pixels = self.pixels([images[i] for i, _ in chunk])
                out.append(scorer.score_pairs(self.model, pixels, ids, mask, tokenizer=self.tokenizer).float().view(-1).cpu())
            return torch.cat(out)
        raise UserError(f"family '{self.family.name}' cannot score image-text pairs")

    def score_sample_texts(self, pairs: Sequence[tuple[int, str]]) -> torch.Tensor:
        """Score ``(sample index, text)`` pairs over the split's images (embeddings shared between tasks)."""
        texts = sorted({t for _, t in pairs})
        where = {t: k for k, t in enumerate(texts)}
        emb = self.image_embeddings() if "retrieval" in self.offers else None
        return self.score_pairs(self.images(), texts, [(i, where[t]) for i, t in pairs], image_emb=emb)

    @torch.no_grad()
    def generate(self, images: Sequence[Image.Image], prompts: Sequence[str] | None, max_new_tokens: int = 24) -> list[str]:
        generator = capability(self.family, TextGenerator)
        out: list[str] = []
        for k in range(0, len(images), self.batch_size):
            chunk_prompts = None if prompts is None else list(prompts[k : k + self.batch_size])
            out.extend(generator.generate_texts(self.model, self.pixels(images[k : k + self.batch_size]),
                                                self.tokenizer, chunk_prompts, max_new_tokens))
        return out


def run_task(name: str, ctx: EvalContext) -> TaskOutput:
    module, _, fn = get_task(name).run.partition(":")
    runner: Callable[[EvalContext], TaskOutput] = getattr(importlib.import_module(module), fn)
    return runner(ctx)
