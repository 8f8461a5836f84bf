"""Every per-part recipe field that takes a pretrained model (a family's ``teachers`` and ``artifact_fields``) takes
an *imported* one: a Hugging Face model registered by ``vlforge import model`` (``run_import``), named by its catalog
folder (what the train stage resolves ``catalog:REF`` to). The part the field fills holds the source's weights, and a
frozen teacher is frozen. (VL-T5's text_init from an imported T5 is in test_text_init.py.)"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch
from conftest import SPECIALS
from vlforge.components.models.registry import apply_freeze, get_family

V = 64  # the tiny tokenizer's size: the imported models' vocabulary and the run's
SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def _gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=2))


def _bart() -> torch.nn.Module:
    from transformers import BartConfig, BartForConditionalGeneration

    return BartForConditionalGeneration(BartConfig(vocab_size=V, d_model=32, encoder_layers=1, decoder_layers=2,
                                                   encoder_attention_heads=2, decoder_attention_heads=2,
                                                   encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
                                                   pad_token_id=SPECIALS["pad"], bos_token_id=SPECIALS["bos"],
                                                   eos_token_id=SPECIALS["eos"]))


def _bert() -> torch.nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    return BertForMaskedLM(BertConfig(vocab_size=V, max_position_embeddings=64, **SIZES))


def _vit() -> torch.nn.Module:
    from transformers import ViTConfig, ViTModel

    return ViTModel(ViTConfig(image_size=32, patch_size=8, **SIZES))


def _vit_classifier() -> torch.nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, num_labels=3, **SIZES))


SOURCES: dict[str, tuple[str, Callable[[], torch.nn.Module] | None]] = {
    "gpt2": ("text-lm", _gpt2), "bart": ("text-bart", _bart), "bert": ("text-mlm", _bert),
    "vit": ("image-teacher", _vit), "vit-cls": ("image-teacher", _vit_classifier), "clip": ("clip", None),
}


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    """Each tiny Hugging Face model saved as its library saves it and imported into one catalog: name -> (the
    catalog folder, the source's state dict)."""
    from tiny_checkpoints import tiny_hf_clip, tiny_tokenizer
    from transformers import AutoTokenizer, CLIPModel, ViTImageProcessor

    from vlforge.catalog import Catalog
    from vlforge.components.stages.imports import run_import

    root = tmp_path_factory.mktemp("imported")
    tok_dir = tiny_tokenizer(root / "tokenizer")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert len(tok) == V
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLFORGE_HOME", str(root / "home"))
        catalog = Catalog(root / "home" / "catalog")
        for name, (family, build) in SOURCES.items():
            src = root / name
            if build is None:
                tiny_hf_clip(src, tok_dir)
                state = CLIPModel.from_pretrained(src).state_dict()
            else:
                torch.manual_seed(len(name))
                source = build()
                source.save_pretrained(src)
                state = {k: v.clone() for k, v in source.state_dict().items()}
                if family == "image-teacher":
                    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(src)
                else:
                    tok.save_pretrained(src)
            art = run_import(src, family, catalog, name=name, tokenizer=tok_dir if family == "image-teacher" else None)
            assert art.model.artifact.family == family
            out[name] = (catalog.path(art.model.artifact.id), state)
    return out


def build(name: str, overrides: dict) -> tuple[torch.nn.Module, object]:
    family = get_family(name)
    recipe = family.recipe("tiny", overrides)
    torch.manual_seed(0)
    return family.build_model(recipe, V, SPECIALS), recipe


def assert_holds(part: torch.nn.Module | Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor],
                 prefix: str = "", rename: Callable[[str], str | None] = lambda k: k, least: int = 10) -> None:
    """Every tensor of ``source`` under ``prefix`` equals ``part``'s under the renamed key (None: not copied)."""
    ours = part.state_dict() if isinstance(part, torch.nn.Module) else part
    checked = 0
    for key, value in source.items():
        if not key.startswith(prefix) or (mine := rename(key[len(prefix):])) is None:
            continue
        assert mine in ours, f"{key} -> {mine} absent"
        assert torch.equal(ours[mine], value), key
        checked += 1
    assert checked >= least, f"only {checked} tensors compared"


def assert_frozen(module: torch.nn.Module) -> None:
    assert not module.training
    assert all(not p.requires_grad for p in module.parameters())


def trainable_after_freeze(family: str, model: torch.nn.Module, recipe: object) -> set[str]:
    apply_freeze(get_family(family), model, recipe)  # type: ignore[arg-type]
    return {n for n, p in model.named_parameters() if p.requires_grad}


def vit_names(key: str) -> str | None:
    """A ``ViTModel`` key (no pooler) as the image-teacher's ``vit`` holds it."""
    return None if key.startswith("pooler.") else key


# ------------------------------------------------------------------------------------------------- the checks
def frozen_language_model(parts: dict) -> None:
    folder, gpt2 = parts["gpt2"]
    model, recipe = build("frozen", {"image_size": 32, "max_text_length": 16, "vision_width": 32, "vision_layers": 1,
                                     "vision_heads": 2, "language_model": str(folder)})
    assert_holds(model.language_model, gpt2)
    trainable = trainable_after_freeze("frozen", model, recipe)
    assert trainable and not any(n.startswith("language_model.") for n in trainable)


def _promptfuse(parts: dict) -> tuple[torch.nn.Module, object]:
    return build("promptfuse", {"image_size": 32, "max_text_length": 16, "n_prompts": 4,
                                "language_model": str(parts["gpt2"][0]), "image_encoder": str(parts["clip"][0])})


def promptfuse_language_model(parts: dict) -> None:
    model, recipe = _promptfuse(parts)
    assert_holds(model.language_model, parts["gpt2"][1])
    assert trainable_after_freeze("promptfuse", model, recipe) == {n for n, _ in model.named_parameters()
                                                                    if n.startswith("prompts")}


def promptfuse_image_encoder(parts: dict) -> None:
    model, recipe = _promptfuse(parts)
    clip = parts["clip"][1]
    assert_holds(model.image_encoder, clip, "vision_model.", lambda k: f"vision_model.{k}")
    assert_holds(model.image_encoder, clip, "visual_projection.", lambda k: f"visual_projection.{k}", least=1)
    assert not any(n.startswith("image_encoder.") for n in trainable_after_freeze("promptfuse", model, recipe))


def _vlkd(parts: dict) -> tuple[torch.nn.Module, object]:
    return build("vlkd", {"image_size": 32, "max_text_length": 16, "teacher": str(parts["clip"][0]),
                          "language_model": str(parts["bart"][0])})


def vlkd_teacher(parts: dict) -> None:
    model, recipe = _vlkd(parts)
    clip = parts["clip"][1]
    assert_holds(model.text_teacher, clip)  # the whole CLIP, attached outside the student
    assert_frozen(model.text_teacher)
    assert not any(k.startswith("text_teacher") for k in model.state_dict())
    assert_holds(model.clip_vision, clip, "vision_model.", lambda k: f"vision_model.{k}")
    assert not any(n.startswith("clip_vision.") for n in trainable_after_freeze("vlkd", model, recipe))


def vlkd_language_model(parts: dict) -> None:
    model, _ = _vlkd(parts)
    assert_holds(model.bart, parts["bart"][1])


def _vk_transfer(parts: dict, **fields: str) -> tuple[torch.nn.Module, object]:
    return build("vk-transfer", {"image_size": 32, "max_text_length": 16, "hidden_size": 32, "num_heads": 2, **fields})


def vk_transfer_teacher(parts: dict) -> None:
    from vlforge.components.models.vk_transfer.modeling import load_teacher

    folder, clip = parts["clip"]
    model, recipe = _vk_transfer(parts, teacher=str(folder))
    from vlforge.components.models.vk_transfer.modeling import TEACHER_DIM_ATTR

    assert getattr(model.config, TEACHER_DIM_ATTR) == 16  # the imported CLIP's joint space
    teacher = load_teacher(recipe.teacher, torch.device("cpu"))  # what its training step reads  # type: ignore[attr-defined]
    assert_holds(teacher, clip)
    assert_frozen(teacher)


def vk_transfer_text_init(parts: dict) -> None:
    model, _ = _vk_transfer(parts, text_init=str(parts["bert"][0]))
    assert_holds(model, parts["bert"][1], rename=lambda k: None if k.startswith("cls.") else k)
    # the imported BERT had no MLM head: it starts fresh (seed 0) in the import, and that is what is copied
    head = get_family("text-mlm").load(parts["bert"][0]).state_dict()
    assert_holds(model, head, "cls.", lambda k: f"cls.{k}", least=3)


def _unified(parts: dict, field: str, source: str) -> tuple[torch.nn.Module, object, torch.nn.Module]:
    from vlforge.components.models.unified.family import load_teachers

    model, recipe = build("unified", {"image_size": 32, "max_text_length": 16, "hidden_size": 32, "num_layers": 2,
                                      "num_heads": 2, field: str(parts[source][0])})
    teacher = load_teachers(model, recipe, torch.device("cpu"))[field]  # type: ignore[arg-type]
    assert teacher is not None
    assert_frozen(teacher)
    assert not any(k.startswith(field) for k in model.state_dict())
    return model, recipe, teacher


def unified_text_teacher(parts: dict) -> None:
    _, _, teacher = _unified(parts, "text_teacher", "bert")
    assert_holds(teacher, parts["bert"][1], rename=lambda k: None if k.startswith("cls.") else k)


def unified_image_teacher(parts: dict) -> None:
    _, _, teacher = _unified(parts, "image_teacher", "vit")
    assert_holds(teacher, parts["vit"][1], rename=lambda k: None if k.startswith("pooler.") else f"vit.{k}")


def vilt_vit_teacher(parts: dict) -> None:
    from vlforge.components.models.vilt.family import _VIT_TO_VILT

    def to_vilt(key: str) -> str | None:
        if key.startswith("pooler."):
            return None
        for old, new in _VIT_TO_VILT:
            key = key.replace(old, new)
        return key

    model, _ = build("vilt", {"image_size": 32, "max_text_length": 16, "patch_size": 8, "hidden_size": 32,
                              "num_layers": 2, "num_heads": 2, "mlp_ratio": 2, "vit_init": "teacher",
                              "vit_teacher": str(parts["vit"][0])})
    assert_holds(model.vilt, parts["vit"][1], rename=to_vilt)


def unimo_text_init(parts: dict) -> None:
    model, _ = build("unimo", {"image_size": 32, "max_text_length": 16, "hidden_size": 32, "num_layers": 2,
                               "num_heads": 2, "mlp_ratio": 2, "text_init": str(parts["bert"][0])})
    positions = model.config.max_position_embeddings
    ours = model.state_dict()
    for key, value in parts["bert"][1].items():
        if key.startswith(("bert.embeddings.", "bert.encoder.")):
            theirs = value[:positions] if key.endswith(("position_embeddings.weight", "position_ids")) else value
            assert torch.equal(ours[key[len("bert."):]], theirs), key


def vl_region_encoder(parts: dict, name: str = "vl-t5") -> None:
    model, recipe = build(name, {"image_size": 32, "max_text_length": 16, "region_features": "teacher",
                                    "region_encoder": str(parts["vit-cls"][0])})
    encoder = model.visual_embedding.image_encoder
    assert_holds(encoder, parts["vit-cls"][1], "vit.", lambda k: None if k.startswith(("pooler.", "classifier.")) else k.replace("encoder.layer.", "layers."))
    assert not any(n.startswith("visual_embedding.image_encoder.") for n in trainable_after_freeze(name, model, recipe))


def vl_bart_text_init(parts: dict) -> None:
    model, _ = build("vl-bart", {"image_size": 32, "max_text_length": 16, "region_features": "scratch",
                                 "vision_width": 32, "vision_layers": 1, "vision_heads": 2,
                                 "text_init": str(parts["bart"][0])})
    ours = model.state_dict()
    regions = model.num_regions
    for key, value in parts["bart"][1].items():
        mine = ours[key]
        if mine.shape == value.shape:
            assert torch.equal(mine, value), key
        elif "embed_positions" in key:
            assert torch.equal(mine, value[: mine.shape[0]]), key
        else:  # a vocabulary table: the source's rows, then the region tokens'
            axis = -1 if key.endswith("final_logits_bias") else 0
            assert mine.shape[axis] == V + regions and torch.equal(mine.narrow(axis, 0, V), value), key


CASES = {
    ("frozen", "language_model"): frozen_language_model,
    ("promptfuse", "language_model"): promptfuse_language_model,
    ("promptfuse", "image_encoder"): promptfuse_image_encoder,
    ("vlkd", "teacher"): vlkd_teacher,
    ("vlkd", "language_model"): vlkd_language_model,
    ("vk-transfer", "teacher"): vk_transfer_teacher,
    ("vk-transfer", "text_init"): vk_transfer_text_init,
    ("unified", "text_teacher"): unified_text_teacher,
    ("unified", "image_teacher"): unified_image_teacher,
    ("vilt", "vit_teacher"): vilt_vit_teacher,
    ("unimo", "text_init"): unimo_text_init,
    ("vl-t5", "region_encoder"): vl_region_encoder,
    ("vl-bart", "region_encoder"): lambda parts: vl_region_encoder(parts, "vl-bart"),
    ("vl-bart", "text_init"): vl_bart_text_init,
}


def test_the_cases_cover_every_pretrained_field() -> None:
    """Each family's teachers and pretrained artifact fields (init_from and CLIP's text_tower aside: those are
    whole-model / tower checkpoints with tests of their own; VL-T5's text_init: test_text_init.py)."""
    from vlforge.components.models.registry import family_names

    fields = {(f.name, field) for f in map(get_family, family_names()) for field in (*f.teachers, *getattr(f, "artifact_fields", ()))
              if field not in ("init_from", "text_tower")}
    assert fields - {("vl-t5", "text_init")} == set(CASES)


@pytest.mark.parametrize(("family", "field"), list(CASES), ids=[f"{a}-{b}" for a, b in CASES])
def test_an_imported_model_fills_the_field(family: str, field: str, imported: dict, one_thread: None) -> None:
    CASES[(family, field)](imported)
