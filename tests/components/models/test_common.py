"""What the families share (``components/models/common``): the preflight checks' one-line messages, the recipe
field groups the families inherit, the recipe -> config arguments, and the patch embedding with its initialisation."""
from __future__ import annotations

import pytest
import torch
from conftest import SPECIALS
from vlforge.components.models.common.config import (
    MaskedLMRecipe,
    PatchRecipe,
    TransformerRecipe,
    VocabRecipe,
    dropouts,
    recipe_sizes,
    transformer_sizes,
)
from vlforge.components.models.common.patch_embed import PatchEmbedding, init_vit_weights
from vlforge.components.models.common.preflight import (
    check_heads,
    check_multiple,
    check_patches,
    check_per_worker_batch,
    check_text_fits,
    check_token,
    check_vocab_size,
    require_mask_id,
    require_special_ids,
)
from vlforge.components.models.registry import get_family

from vlforge.errors import UserError


def test_vocab_size_must_hold_the_tokenizer(tokenizer) -> None:
    check_vocab_size(tokenizer, None)
    check_vocab_size(tokenizer, len(tokenizer))
    with pytest.raises(UserError, match=rf"^the tokenizer has {len(tokenizer)} tokens, more than the recipe's vocab_size 50$"):
        check_vocab_size(tokenizer, 50)


def test_token_checks_name_the_family_and_the_missing_role(tokenizer) -> None:
    check_token("vilt", tokenizer, "mask")  # the project's tokenizer has one
    with pytest.raises(UserError, match=r"^vilt: the tokenizer has no sep token, which MLM needs$"):
        check_token("vilt", tokenizer, "sep")
    require_mask_id("vilt", SPECIALS)
    with pytest.raises(UserError, match=r"^vilt needs a tokenizer with a mask token \(MLM\)$"):
        require_mask_id("vilt", {"pad": 0})
    require_special_ids("unimo", SPECIALS, ("mask", "bos", "eos"), "MLM and generation")
    with pytest.raises(UserError, match=r"^unimo needs a tokenizer with mask, eos token\(s\) \(MLM and generation\)$"):
        require_special_ids("unimo", {"bos": 3}, ("mask", "bos", "eos"), "MLM and generation")


def test_shape_checks_name_both_fields() -> None:
    vilt = get_family("vilt")
    recipe = vilt.recipe("tiny", {"hidden_size": 130, "num_heads": 4, "image_size": 60, "patch_size": 8})
    with pytest.raises(UserError, match=r"^vilt recipe: hidden_size 130 is not a multiple of num_heads 4$"):
        check_heads("vilt", recipe)
    with pytest.raises(UserError, match=r"^vilt recipe: image_size 60 is not a multiple of patch_size 8$"):
        check_patches("vilt", recipe)
    check_multiple("vilt", "hidden_size", 128, "num_heads", 4)
    text_mlm = get_family("text-mlm").recipe("tiny", {"max_text_length": 40, "max_position_embeddings": 32})
    with pytest.raises(UserError, match=r"^text-mlm recipe: max_text_length 40 exceeds max_position_embeddings 32$"):
        check_text_fits("text-mlm", text_mlm)


def test_per_worker_batch_counts_each_workers_share() -> None:
    recipe = get_family("vilt").recipe("tiny", {"batch_size": 4, "num_workers": 2})
    check_per_worker_batch("vilt", recipe, "pairs", "ITM needs another image to swap in")
    with pytest.raises(UserError, match=r"^vilt: batch_size 4 over 2 workers leaves fewer than 3 pairs per worker; ITM"):
        check_per_worker_batch("vilt", recipe, "pairs", "ITM needs another image to swap in", least=3)


def test_families_inherit_the_shared_recipe_fields_with_their_own_defaults() -> None:
    vilt, text_mlm = get_family("vilt").recipe_cls, get_family("text-mlm").recipe_cls
    for base in (TransformerRecipe, PatchRecipe, VocabRecipe, MaskedLMRecipe):
        assert issubclass(vilt, base)
    assert vilt().num_layers == 3 and text_mlm().num_layers == 2  # text-mlm overrides the shared default
    assert text_mlm.model_fields["mlp_ratio"].description == "intermediate size = mlp_ratio x hidden_size"
    with pytest.raises(UserError, match="field 'hidden_size'"):
        get_family("vilt").recipe("tiny", {"hidden_size": 4})  # the shared bound (ge=8) still applies


def test_config_arguments_from_a_recipe() -> None:
    recipe = get_family("image-teacher").recipe("tiny", {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "mlp_ratio": 3})
    assert recipe_sizes(recipe) == {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                    "intermediate_size": 192}
    assert transformer_sizes(32, 1, 2, 4)["intermediate_size"] == 128
    assert dropouts(0.1) == {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}


def test_task_weights_are_checked_by_name_and_sign() -> None:
    with pytest.raises(UserError, match=r"unknown task 'nope' \(tasks: vqa, itm, text_cls, detection\)"):
        get_family("unit").recipe("tiny", {"task_weights": {"nope": 1.0}})
    with pytest.raises(UserError, match="weights must be >= 0 and at least one positive"):
        get_family("unit").recipe("tiny", {"task_weights": {"itm": 0.0}})
    with pytest.raises(UserError, match="task weights must be >= 0 with at least one positive"):
        get_family("vl-t5").recipe("tiny", {"task_weights": {"lm": -1.0, "caption": 1.0}})


def test_patch_embedding_projects_patches_and_writes_the_mask_token() -> None:
    from vlforge.components.models.vlmo.modeling import ImageEmbeddings, VlmoConfig

    torch.manual_seed(0)
    emb = ImageEmbeddings(VlmoConfig(hidden_size=16, image_size=32, patch_size=8))
    assert isinstance(emb, PatchEmbedding) and emb.num_patches == 16
    # the checkpoint keys VLMo had before the shared base: the subclass's own names, ``proj`` a child module
    assert [n for n, _ in emb.named_parameters()] == ["cls_token", "mask_token", "pos_embed", "proj.weight", "proj.bias"]
    pixels = torch.randn(2, 3, 32, 32)
    # patch (row 1, column 2) of image 0 is the conv over its 8x8 pixels
    manual = torch.einsum("chw,dchw->d", pixels[0, :, 8:16, 16:24], emb.proj.weight) + emb.proj.bias
    assert torch.allclose(emb.patches(pixels)[0, 1 * 4 + 2], manual, atol=1e-5)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[1, 3] = True
    with torch.no_grad():
        emb.mask_token.fill_(7.0)
    masked = emb.patches(pixels, mask)
    assert torch.equal(masked[1, 3], torch.full((16,), 7.0)) and torch.equal(masked[0], emb.patches(pixels)[0])


def test_vit_initialisation_draws_the_learned_tokens_and_scales_the_projection() -> None:
    from vlforge.components.models.unimo.modeling import ImageEmbeddings, UnimoConfig

    emb = ImageEmbeddings(UnimoConfig(hidden_size=64, image_size=32, patch_size=8))
    assert all(float(p.detach().abs().sum()) == 0 for p in emb.learned_tokens())  # zeros until initialised
    torch.manual_seed(0)
    for module in emb.modules():
        init_vit_weights(module, std=0.02)
    assert all(0.01 < float(p.detach().std()) < 0.03 for p in (emb.img_token, emb.position_embeddings))
    fan_in = 3 * 8 * 8
    assert abs(float(emb.proj.weight.detach().std()) - fan_in**-0.5) < 0.2 * fan_in**-0.5
    assert float(emb.proj.bias.detach().abs().sum()) == 0
    assert torch.equal(emb.LayerNorm.weight, torch.ones(64))
    assert init_vit_weights(torch.nn.ReLU(), std=0.02) is False
