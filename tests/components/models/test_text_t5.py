"""text-t5 (the shared battery in test_families.py covers learning a fixed batch): t5-base's parameter count, one span
corruption step gives a finite loss and a gradient to every parameter, and the checkpoint round-trips."""
from pathlib import Path

import pytest
import torch
from conftest import SPECIALS, paper_size_model, parameter_count, save_untrained
from test_families import fixed_batch
from vlforge.components.models.registry import FAMILY_FILE, get_family, read_family_file

from vlforge.errors import UserError

TINY = {"image_size": 32, "max_text_length": 16, "d_model": 32, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 2,
        "num_heads": 2}


def test_base_recipe_is_t5_base() -> None:
    # t5-base as released: 222,903,552 parameters with its 32,128-row vocabulary and the tied LM head
    assert parameter_count(paper_size_model("text-t5", 32_128)) == 222_903_552


def test_a_span_corruption_step_and_the_checkpoint_round_trip(tokenizer, tmp_path: Path) -> None:
    family = get_family("text-t5")
    recipe = family.recipe("tiny", TINY)
    torch.manual_seed(0)
    model = family.build_model(recipe, len(tokenizer), SPECIALS)
    batch = fixed_batch(recipe, tokenizer, n=4)
    out = family.training_step(model, batch, recipe)
    assert torch.isfinite(out["loss"]) and out["loss"] > 0
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # the same (seed, step, batch) draws the same spans: a step is reproducible
    model.eval()
    with torch.no_grad():
        a = family.training_step(model, batch, recipe)["loss"]
        assert torch.equal(a, family.training_step(model, batch, recipe)["loss"])
    family.save(model, tmp_path / "ckpt", recipe)
    fam, saved = read_family_file(tmp_path / "ckpt")
    assert fam.name == "text-t5" and saved == recipe and (tmp_path / "ckpt" / FAMILY_FILE).is_file()
    loaded = family.load(tmp_path / "ckpt").eval()
    with torch.no_grad():
        assert torch.equal(a, family.training_step(loaded, batch, recipe)["loss"])
    bart = save_untrained("text-bart", {"d_model": 32, "ffn_dim": 64, "max_text_length": 16}, len(tokenizer), tmp_path / "bart")
    with pytest.raises(UserError, match="holds a 'bart' model, not a T5 one"):
        family.load(bart)
