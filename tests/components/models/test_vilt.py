"""ViLT-specific checks (the shared battery in test_families.py covers learning, save/load and the paper size):
whole-word masking masks whole words, ITM negatives are really mismatched pairs, and ITM scoring works."""
from pathlib import Path

import pytest
import torch
from conftest import SPECIALS
from vlforge.components.models.heads import same_sample_mask, sample_negatives
from vlforge.components.models.masking import IGNORE_INDEX, batch_generator, mask_tokens
from vlforge.components.models.registry import ImageTextBatch, get_family
from vlforge.components.models.vilt.family import swap_images
from vlforge.components.tokenizer import TokenizerConfig, train_tokenizer
from vlforge.components.training.loop import word_id_tensor



def test_whole_word_masking_masks_every_piece_of_a_chosen_word(tmp_path: Path) -> None:
    captions = ["a reddish triangle beside a bluish circle", "the greenish square above a yellowish star"] * 20
    tok = train_tokenizer(captions, tmp_path / "tok", TokenizerConfig(kind="wordpiece", vocab_size=40))
    from vlforge.components.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tok)
    enc = tokenizer(captions[:2], padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    word_ids = word_id_tensor(enc, 2)
    assert (word_ids.max(dim=1).values == 6).all()  # seven words each
    pieces = torch.stack([(word_ids == w).sum(dim=1) for w in range(7)], dim=1)
    assert (pieces > 1).any(), "the small vocabulary should split some words into pieces"
    as_mask = total = 0
    for seed in range(20):
        masked, labels = mask_tokens(
            enc["input_ids"], enc["attention_mask"], mask_id=2, vocab_size=len(tokenizer), special_ids=SPECIALS.values(),
            word_ids=word_ids, p=0.3, generator=torch.Generator().manual_seed(seed),
        )
        chosen = labels != IGNORE_INDEX
        assert chosen.any(dim=1).all()  # every caption gets at least one masked word
        assert not (chosen & ~enc["attention_mask"].bool()).any()  # never padding
        assert not (chosen & (word_ids < 0)).any()  # never a special token
        for row in range(2):
            for w in range(7):
                in_word = word_ids[row] == w
                assert chosen[row][in_word].all() or not chosen[row][in_word].any(), (seed, row, w)
        assert torch.equal(labels[chosen], enc["input_ids"][chosen])
        as_mask += int((masked[chosen] == 2).sum())
        total += int(chosen.sum())
        assert torch.equal(masked[~chosen], enc["input_ids"][~chosen])
    assert 0.65 < as_mask / total < 0.95  # BERT's 80/10/10: mostly <mask>, the rest random or kept


def test_token_masking_rate_without_word_ids() -> None:
    ids = torch.randint(5, 100, (64, 32))
    _, labels = mask_tokens(ids, torch.ones_like(ids), mask_id=2, vocab_size=100, special_ids=SPECIALS.values(),
                                 word_ids=None, generator=torch.Generator().manual_seed(0))
    rate = (labels != IGNORE_INDEX).float().mean().item()
    assert 0.12 < rate < 0.18, rate


def test_itm_negatives_are_mismatched_pairs() -> None:
    keys = [f"k{i}" for i in range(16)]
    pixels = torch.arange(16, dtype=torch.float32)[:, None, None, None].expand(16, 3, 4, 4).clone()  # image i is all i
    swapped = 0
    for seed in range(10):
        images, labels = swap_images(pixels, keys, 0.5, torch.Generator().manual_seed(seed))
        source = images[:, 0, 0, 0].long()
        assert torch.equal(source[labels == 1], torch.arange(16)[labels == 1])  # matched: its own image
        assert (source[labels == 0] != torch.arange(16)[labels == 0]).all()  # swapped: another sample's image
        swapped += int((labels == 0).sum())
    assert 50 < swapped < 110  # p = 0.5 of 160 pairs
    # rows sharing a key (the same sample twice in a batch) never serve as each other's negative
    dup = ["a", "a", "b", "b"]
    for seed in range(20):
        partner = sample_negatives(torch.zeros(4, 4), "random", same_sample_mask(dup), torch.Generator().manual_seed(seed))
        assert all(dup[i] != dup[j] for i, j in enumerate(partner.tolist()))
    assert (sample_negatives(torch.zeros(2, 2), "random", same_sample_mask(["x", "x"])) == -1).all()
    # nor do two scenes captioned alike: each image matches the other's caption too
    captions = ["a red star", "A red  star", "a blue cross", "a blue cross", "a green circle", "a red star"]
    pixels6 = torch.arange(6, dtype=torch.float32)[:, None, None, None].expand(6, 3, 4, 4).clone()
    for seed in range(20):
        images, labels = swap_images(pixels6, [f"k{i}" for i in range(6)], 1.0, torch.Generator().manual_seed(seed), captions)
        source = images[:, 0, 0, 0].long().tolist()
        for i, j in enumerate(source):
            if labels[i] == 0:
                assert " ".join(captions[i].lower().split()) != " ".join(captions[j].lower().split()), (i, j)


def test_score_pairs_and_reproducible_losses() -> None:
    torch.manual_seed(0)
    family = get_family("vilt")
    assert "itm" in family.capabilities
    recipe = family.recipe("tiny", {"image_size": 32, "max_text_length": 12})
    model = family.build_model(recipe, 64, SPECIALS).eval()
    ids = torch.randint(5, 64, (4, 12))
    batch = ImageTextBatch(torch.randn(4, 3, 32, 32), ids, torch.ones_like(ids), ["c"] * 4, ["a", "b", "c", "d"])
    with torch.no_grad():
        scores = family.score_pairs(model, batch.pixel_values, batch.input_ids, batch.attention_mask)
        assert scores.shape == (4,) and torch.isfinite(scores).all()
        a = family.training_step(model, batch, recipe)["loss"]
        b = family.training_step(model, batch, recipe)["loss"]  # same batch: same masks and negatives
        other = ImageTextBatch(batch.pixel_values, ids, batch.attention_mask, batch.captions, ["e", "f", "g", "h"])
        c = family.training_step(model, other, recipe)["loss"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    g1, g2 = batch_generator(["x", "y"], 0), batch_generator(["y", "x"], 0)
    assert not torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_vit_init_copies_an_image_teacher_into_the_transformer(tmp_path: Path) -> None:
    """vit_init: teacher (the paper starts from an ImageNet ViT): the image-teacher's patch projection, [CLS], patch
    positions, layers and final LayerNorm land in ViltModel; text embeddings stay fresh; a teacher of another shape
    is a one-line error; a given teacher is used whatever vit_init says; the flow trains one only for vit_init: teacher."""
    from vlforge.components.stages import missing_teachers
    from vlforge.errors import UserError

    size = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 2}
    teacher_family = get_family("image-teacher")
    t_recipe = teacher_family.recipe("tiny", size)
    torch.manual_seed(3)
    teacher = teacher_family.build_model(t_recipe, 50, SPECIALS)
    teacher_family.save(teacher, tmp_path / "teacher", t_recipe)

    family = get_family("vilt")
    assert missing_teachers("vilt", family.recipe("tiny", {**size, "vit_init": "teacher"})) == {"vit_teacher": "image-teacher"}
    assert missing_teachers("vilt", family.recipe("tiny", {**size, "vit_init": "scratch"})) == {}
    # base starts from a ViT as the paper; the default one the flow trains has ViLT's transformer shape
    base = family.recipe("base")
    assert base.vit_init == "teacher" and family.recipe("tiny").vit_init == "scratch"
    shape = family.teacher_overrides("vit_teacher", base, frozenset())
    assert shape == {"image_size": 384, "patch_size": 32, "hidden_size": 768, "num_layers": 12, "num_heads": 12,
                     "mlp_ratio": 4}
    teacher_family.recipe("base", shape)  # a valid image-teacher recipe
    assert missing_teachers("vilt", family.recipe("tiny", size)) == {}
    recipe = family.recipe("tiny", {**size, "vit_teacher": str(tmp_path / "teacher")})
    model = family.build_model(recipe, 50, SPECIALS)
    vit, vilt = teacher.vit.state_dict(), model.vilt.state_dict()
    assert torch.equal(vilt["embeddings.patch_embeddings.projection.weight"], vit["embeddings.patch_embeddings.projection.weight"])
    assert torch.equal(vilt["embeddings.position_embeddings"], vit["embeddings.position_embeddings"])
    assert torch.equal(vilt["encoder.layer.1.attention.attention.query.weight"], vit["layers.1.attention.q_proj.weight"])
    assert torch.equal(vilt["encoder.layer.0.output.dense.bias"], vit["layers.0.mlp.fc2.bias"])
    assert torch.equal(vilt["layernorm.weight"], vit["layernorm.weight"])
    fresh = family.build_model(family.recipe("tiny", {**size, "vit_init": "scratch"}), 50, SPECIALS)
    assert not torch.equal(fresh.vilt.state_dict()["encoder.layer.1.attention.attention.query.weight"],
                           vit["layers.1.attention.q_proj.weight"])
    with pytest.raises(UserError, match="does not fit the recipe"):
        family.build_model(family.recipe("tiny", {**size, "num_layers": 3, "vit_teacher": str(tmp_path / "teacher")}), 50, SPECIALS)
    with pytest.raises(UserError, match="it has 8 px patches, the recipe.s patch_size is 16"):
        family.build_model(family.recipe("tiny", {**size, "patch_size": 16, "vit_teacher": str(tmp_path / "teacher")}), 50, SPECIALS)


def test_a_vit_teacher_of_another_image_size_has_its_positions_interpolated(tmp_path: Path) -> None:
    """A 32 px teacher (4x4 patches) for a 64 px ViLT (8x8): [CLS]'s position is kept, the patch positions are the
    teacher's grid resized bicubically to ViLT's (as ViLT runs its 384 px ViT at other resolutions); the layers are
    copied as for a teacher of the recipe's size."""
    import torch.nn.functional as F

    size = {"patch_size": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 2}
    teacher_family = get_family("image-teacher")
    t_recipe = teacher_family.recipe("tiny", {**size, "image_size": 32})
    torch.manual_seed(3)
    teacher = teacher_family.build_model(t_recipe, 50, SPECIALS)
    teacher_family.save(teacher, tmp_path / "teacher", t_recipe)
    family = get_family("vilt")
    model = family.build_model(family.recipe("tiny", {**size, "image_size": 64, "vit_teacher": str(tmp_path / "teacher")}),
                               50, SPECIALS)
    vit, vilt = teacher.vit.state_dict(), model.vilt.state_dict()
    theirs, ours = vit["embeddings.position_embeddings"], vilt["embeddings.position_embeddings"]
    assert theirs.shape == (1, 17, 32) and ours.shape == (1, 65, 32)
    assert torch.equal(ours[:, 0], theirs[:, 0])
    grid = theirs[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 64, 32)
    assert torch.allclose(ours[:, 1:], expected, atol=1e-6)
    assert torch.equal(vilt["encoder.layer.1.attention.attention.query.weight"], vit["layers.1.attention.q_proj.weight"])
    assert torch.equal(vilt["embeddings.patch_embeddings.projection.weight"], vit["embeddings.patch_embeddings.projection.weight"])
