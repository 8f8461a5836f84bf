"""The tasks CLIP cannot run (ITM, captioning, VQA by generation, zero-shot through a matching head), run on two
small real models trained here for a few hundred steps: a fusion matcher (conv image features x bag-of-words text
-> match logit) and a GRU captioner conditioned on the image. Each is a ``Family`` (not registered, so the family
battery does not pick it up) that offers the capability through the methods ``tasks.CAPABILITIES`` names."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from eval_fixtures import one_torch_thread, shapes_dataset  # noqa: F401  (fixtures)
from torch import nn
from vlforge.components.data.loader import read_split
from vlforge.components.evaluation.runner import untrained_model
from vlforge.components.evaluation.tasks import (
    EvalContext,
    check_fit,
    family_offers,
    run_task,
)
from vlforge.components.models.registry import (
    Family,
    ImageTextBatch,
    Recipe,
    special_token_ids,
)
from vlforge.components.sources.scene_tasks import vqa_questions
from vlforge.components.sources.shapes import make_scene, render_scene
from vlforge.components.tokenizer import (
    TokenizerConfig,
    load_tokenizer,
    train_tokenizer,
)

IMAGE = 32
RECIPE = Recipe(image_size=IMAGE, max_text_length=20, seed=3)


class ImageFeatures(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 32, 4, stride=4), nn.ReLU(), nn.Conv2d(32, 32, 2, stride=2), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)


class Matcher(nn.Module):
    def __init__(self, vocab: int, dim: int = 64) -> None:
        super().__init__()
        self.image, self.words = ImageFeatures(dim), nn.Embedding(vocab, dim)
        self.head = nn.Sequential(nn.Linear(3 * dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        i = self.image(pixels)
        m = mask.float().unsqueeze(-1)
        t = (self.words(ids) * m).sum(1) / m.sum(1).clamp(min=1)
        return self.head(torch.cat([i, t, i * t], dim=-1)).squeeze(-1)


class TinyMatcherFamily(Family):
    name = "tiny-itm"
    paper = "test fixture: a fusion image-text matcher (ITM head as in ALBEF/ViLT)"
    capabilities = frozenset({"itm"})

    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        return Matcher(vocab_size)

    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        neg_ids, neg_mask = batch.input_ids.roll(1, 0), batch.attention_mask.roll(1, 0)
        pos = model(batch.pixel_values, batch.input_ids, batch.attention_mask)
        neg = model(batch.pixel_values, neg_ids, neg_mask)
        loss = F.binary_cross_entropy_with_logits(torch.cat([pos, neg]), torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]))
        return {"loss": loss}

    def load(self, model_dir: Path) -> nn.Module:
        raise NotImplementedError("the test keeps its model in memory")

    def score_pairs(self, model: nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor, tokenizer: object = None) -> torch.Tensor:
        return model(pixel_values, input_ids, attention_mask)


class Captioner(nn.Module):
    def __init__(self, vocab: int, dim: int = 96) -> None:
        super().__init__()
        self.image, self.embed = ImageFeatures(dim), nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.out = nn.Linear(dim, vocab)

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, h: torch.Tensor | None = None):
        h = self.image(pixels).unsqueeze(0) if h is None else h
        y, h = self.gru(self.embed(ids), h)
        return self.out(y), h


class TinyCaptionerFamily(Family):
    name = "tiny-captioner"
    paper = "test fixture: an image-conditioned GRU language model (Show and Tell style)"
    capabilities = frozenset({"generate"})

    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        return Captioner(vocab_size)

    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        logits, _ = model(batch.pixel_values, batch.input_ids[:, :-1])
        target = batch.input_ids[:, 1:].masked_fill(batch.attention_mask[:, 1:] == 0, -100)
        return {"loss": F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100)}

    def load(self, model_dir: Path) -> nn.Module:
        raise NotImplementedError("the test keeps its model in memory")

    @torch.no_grad()
    def generate_texts(self, model: nn.Module, pixel_values: torch.Tensor, tokenizer, prompts: list[str] | None,
                       max_new_tokens: int) -> list[str]:
        out = []
        for k in range(len(pixel_values)):
            prefix = [tokenizer.bos_token_id]
            if prompts is not None:
                prefix += tokenizer(prompts[k], add_special_tokens=False)["input_ids"]
            logits, h = model(pixel_values[k : k + 1], torch.tensor([prefix]))
            new: list[int] = []
            for _ in range(max_new_tokens):
                nxt = int(logits[0, -1].argmax())
                if nxt == tokenizer.eos_token_id:
                    break
                new.append(nxt)
                logits, h = model(pixel_values[k : k + 1], torch.tensor([[nxt]]), h)
            out.append(tokenizer.decode(new, skip_special_tokens=True))
        return out


def training_texts(start: int, n: int) -> list[tuple[int, str]]:
    """Scenes ``start..start+n`` (none of them in the evaluated dataset): captions and VQA question-answer lines."""
    items = []
    for i in range(start, start + n):
        facts = make_scene(0, i).facts()
        items.append((i, make_scene(0, i).caption))
        items += [(i, f"question: {q.question} answer: {q.answer}") for q in vqa_questions(str(i), facts)]
    return items


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer([t for _, t in training_texts(1000, 300)], out, TokenizerConfig(vocab_size=160))
    return load_tokenizer(out)


def train(family: Family, tokenizer, steps: int, texts: list[tuple[int, str]], lr: float = 3e-3) -> nn.Module:
    torch.manual_seed(0)
    model = family.build_model(RECIPE, len(tokenizer), special_token_ids(tokenizer))
    ctx = EvalContext(family, model, RECIPE, tokenizer, [])
    images = {i: render_scene(make_scene(0, i), 48) for i in {i for i, _ in texts}}
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        pick = torch.randint(len(texts), (48,), generator=g).tolist()
        ids, mask = ctx.tokens([texts[k][1] for k in pick])
        batch = ImageTextBatch(ctx.pixels([images[texts[k][0]] for k in pick]), ids, mask, [], [])
        loss = family.training_step(model, batch, RECIPE)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def contexts(family: Family, model: nn.Module, tokenizer, dataset: Path) -> tuple[EvalContext, EvalContext]:
    samples = read_split(dataset, "all")
    return (EvalContext(family, model, RECIPE, tokenizer, samples),
            EvalContext(family, untrained_model(family, RECIPE, tokenizer), RECIPE, tokenizer, samples))


def test_itm_and_zero_shot_through_a_matching_head(tokenizer, shapes_dataset: Path) -> None:
    family = TinyMatcherFamily()
    assert {"itm", "pair_scoring", "zero_shot_classification"} <= family_offers(family)
    check_fit(["itm", "zero_shot_classification", "vqa", "nlvr", "grounding"], family,
              frozenset({"captions", "labels", "facts"}), "shapes")
    model = train(family, tokenizer, 250, [(i, t) for i, t in training_texts(1000, 300) if not t.startswith("question")])
    trained, untrained = contexts(family, model, tokenizer, shapes_dataset)
    itm, base = run_task("itm", trained), run_task("itm", untrained)
    assert itm.metrics["itm_pair_accuracy"] > 0.8 > base.metrics["itm_pair_accuracy"], (itm.metrics, base.metrics)
    assert itm.metrics["itm_accuracy"] > 0.7 and len(itm.rows["pos_logit"]) == 48
    zs = run_task("zero_shot_classification", trained)
    assert 0.0 <= zs.metrics["zs_top1"] <= 1.0 and len(zs.rows["prediction"]) == 48
    vqa = run_task("vqa", trained)
    assert set(vqa.rows["mode"]) == {"scoring"} and vqa.metrics["vqa_acc_color"] > 0.25, vqa.metrics  # chance 1/8


def test_captioning_and_vqa_by_generation(tokenizer, shapes_dataset: Path) -> None:
    family = TinyCaptionerFamily()
    check_fit(["captioning", "vqa"], family, frozenset({"captions", "facts"}), "shapes")
    texts = training_texts(1000, 300)
    # one model per task: unprompted, a model trained on both would start every caption with "question:"
    model = train(family, tokenizer, 300, [(i, t) for i, t in texts if not t.startswith("question")])
    trained, untrained = contexts(family, model, tokenizer, shapes_dataset)
    cap, base = run_task("captioning", trained), run_task("captioning", untrained)
    assert cap.metrics["cider"] > 0.5 > base.metrics["cider"], (cap.metrics, base.metrics)
    assert cap.metrics["bleu4"] > base.metrics["bleu4"]
    assert cap.metrics["caption_distinct"] > 0.2, cap.metrics  # captions follow the image, not one language prior
    assert cap.metrics["cider_mismatched"] < 0.5 * cap.metrics["cider"], cap.metrics  # ... and fit their own image
    assert len(cap.rows["prediction"]) == 48 and all(isinstance(p, str) for p in cap.rows["prediction"])
    model = train(family, tokenizer, 300, [(i, t) for i, t in texts if t.startswith("question")])
    trained = contexts(family, model, tokenizer, shapes_dataset)[0]
    vqa, vbase = run_task("vqa", trained), run_task("vqa", untrained)
    assert set(vqa.rows["mode"]) == {"generation"}
    assert vqa.metrics["vqa_accuracy"] > vbase.metrics["vqa_accuracy"] + 0.2, (vqa.metrics, vbase.metrics)
