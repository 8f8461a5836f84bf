"""text-mlm-specific checks (the shared battery in test_families.py covers learning and save/load): BERT-base's
size, the objective ignores images, and ``encode_texts`` pools only real tokens."""
import pytest
import torch
from conftest import SPECIALS, paper_size_model, parameter_count
from vlforge.components.models.registry import ImageTextBatch, get_family

from vlforge.errors import UserError

SMALL = {"image_size": 32, "max_text_length": 12, "hidden_size": 32, "num_layers": 1}


def batch(n: int = 4, seed: int = 1) -> ImageTextBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 64, (n, 12), generator=g)
    ids[:, 0], ids[:, -1] = SPECIALS["bos"], SPECIALS["eos"]
    return ImageTextBatch(torch.randn(n, 3, 32, 32, generator=g), ids, torch.ones_like(ids), ["c"] * n, [f"k{i}" for i in range(n)])


def test_base_is_bert_base_size() -> None:
    # BERT-base: 110M parameters (Devlin et al. 2019, section 3). Counted: embeddings (30,522-token vocabulary,
    # 512 positions), 12 layers, and BertForMaskedLM's MLM head (transform + LayerNorm + output bias; the decoder
    # is tied to the word embeddings); no pooler. 109,514,298 here.
    model = paper_size_model("text-mlm", 30522)
    count = parameter_count(model)
    assert abs(count - 110_000_000) / 110_000_000 < 0.01, count
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


def test_objective_ignores_images_and_masks_only_real_tokens() -> None:
    family = get_family("text-mlm")
    recipe = family.recipe("tiny", SMALL)
    torch.manual_seed(0)
    model = family.build_model(recipe, 64, SPECIALS).eval()
    b = batch()
    with torch.no_grad():
        a = family.training_step(model, b, recipe)["loss"]
        b.pixel_values = torch.randn_like(b.pixel_values)
        c = family.training_step(model, b, recipe)["loss"]
    assert torch.equal(a, c)


def test_text_features_pool_real_tokens_only() -> None:
    family = get_family("text-mlm")
    torch.manual_seed(0)
    model = family.build_model(family.recipe("tiny", SMALL), 64, SPECIALS).eval()
    b = batch()
    b.attention_mask[:, 8:] = 0
    changed = b.input_ids.clone()
    changed[:, 9] = 7  # a padded position
    with torch.no_grad():
        x = family.encode_texts(model, b.input_ids, b.attention_mask)
        y = family.encode_texts(model, changed, b.attention_mask)
        f = family.text_features(model, b.input_ids, b.attention_mask, b.pixel_values)
    assert x.shape == f.shape == (4, 32) and "text_features" in family.capabilities
    assert torch.allclose(x, torch.nn.functional.normalize(f, dim=-1), atol=1e-6)
    assert torch.allclose(x.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(x, y, atol=1e-6)


def test_needs_a_mask_token() -> None:
    family = get_family("text-mlm")
    with pytest.raises(UserError, match="mask token"):
        family.build_model(family.recipe("tiny", SMALL), 64, {"pad": 0})
