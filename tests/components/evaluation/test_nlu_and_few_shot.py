"""The NLU probe (visual extensions analysis) and few-shot VQA: what they feed the model, that the evaluated
checkpoint is never changed, and that fine-tuning the text side beats chance on a label the caption states."""
from pathlib import Path

import torch
from eval_fixtures import one_torch_thread, shapes_dataset, tiny_clip_dir  # noqa: F401  (fixtures)
from vlforge.components.data.loader import read_split
from vlforge.components.evaluation.tasks import EvalContext, run_task
from vlforge.components.evaluation.vqa import FEW_SHOT_K, few_shot_items, run_vqa_few_shot
from vlforge.components.models.registry import read_family_file
from vlforge.components.tokenizer import load_tokenizer


def clip_context(model_dir: Path, dataset: Path, split: str = "validation") -> EvalContext:
    family, recipe = read_family_file(model_dir)
    return EvalContext(family, family.load(model_dir).eval(), recipe, load_tokenizer(model_dir), read_split(dataset, split),
                       lambda: read_split(dataset, "train"))


def test_nlu_probe_fine_tunes_a_copy_and_learns_the_label_from_text(tiny_clip_dir: Path, shapes_dataset: Path) -> None:
    ctx = clip_context(tiny_clip_dir, shapes_dataset)
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    out = run_task("nlu_probe", ctx)
    assert all(torch.equal(before[k], v) for k, v in ctx.model.state_dict().items())  # the checkpoint is untouched
    m = out.metrics
    assert m["nlu_train_samples"] == len([s for s in read_split(shapes_dataset, "train") if s.meta.get("label")])
    assert len(out.rows["prediction"]) == len(ctx.samples)
    assert m["nlu_accuracy"] > m["nlu_chance"], m
    again = run_task("nlu_probe", clip_context(tiny_clip_dir, shapes_dataset))
    assert again.metrics == m  # seeded: the same probe twice gives the same numbers


class _Recorder:
    """A stand-in model interface that records what few-shot VQA sends and answers with the last shot's answer."""

    image_mean = (0.5, 0.5, 0.5)
    image_std = (0.25, 0.25, 0.25)

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []

    def few_shot_generate(self, model, shots, query_pixels, query_prompt, tokenizer, max_new_tokens):
        self.calls.append((len(shots), query_prompt))
        assert all(p.shape == query_pixels.shape for p, _ in shots)
        return shots[-1][1].split("answer: ", 1)[1] if shots else "yes"


def test_few_shot_vqa_shots_are_solved_examples_of_other_scenes(tiny_clip_dir: Path, shapes_dataset: Path) -> None:
    ctx = clip_context(tiny_clip_dir, shapes_dataset, "all")
    items = few_shot_items(ctx)
    assert items
    for i, q, shots in items:
        assert len(shots) == FEW_SHOT_K
        assert all(j != i and s.qtype == q.qtype for j, s in shots)
    recorder = _Recorder()
    ctx.family = recorder  # type: ignore[assignment]
    out = run_vqa_few_shot(ctx)
    assert sorted({k for k, _ in recorder.calls}) == [0, FEW_SHOT_K]
    assert all(p.endswith("answer:") for _, p in recorder.calls)
    copied = sum(q.answer == shots[-1][1].answer.split()[0] for _, q, shots in items) / len(items)
    assert abs(out.metrics["vqa_few_shot_accuracy"] - copied) < 1e-9
