"""Per-part pretrained initialisation (``text_init``; ``common/parts.py``'s ``load_part`` / ``copy_part``):
UNIMO starts its transformer from a text-mlm model, VL-T5 / VL-BART their backbone from a text-t5 / text-bart model
(a Hugging Face T5 imported as text-t5, too). The copied weights are the source's, the rest starts as without
text_init, the LM heads stay tied, and every misfit is a one-line UserError naming both sides."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SPECIALS, save_untrained
from vlforge.components.models.registry import get_family

from vlforge.errors import UserError

V = 60  # the run's text vocabulary (the tokenizer's size)
UNIMO = {"image_size": 32, "max_text_length": 16, "hidden_size": 32, "num_layers": 2, "num_heads": 2}
BERT = {"max_text_length": 16, "hidden_size": 32, "num_layers": 2, "num_heads": 2}
# the VL recipes' own sizes stay at the tiny recipe's (width 128): text_init replaces them with the source's
VL = {"image_size": 32, "max_text_length": 16, "region_features": "scratch", "vision_width": 32, "vision_layers": 1,
      "vision_heads": 2}
T5 = {"max_text_length": 16, "d_model": 32, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 2, "num_heads": 2}
BART = {"max_text_length": 16, "d_model": 32, "ffn_dim": 64, "encoder_layers": 1, "decoder_layers": 2,
        "attention_heads": 2, "max_positions": 128}


def build(name: str, overrides: dict, vocab: int = V) -> torch.nn.Module:
    family = get_family(name)
    torch.manual_seed(0)
    return family.build_model(family.recipe("tiny", overrides), vocab, SPECIALS)


def one_line_error(match: str, name: str, overrides: dict, vocab: int = V) -> str:
    with pytest.raises(UserError, match=match) as err:
        build(name, overrides, vocab)
    assert "\n" not in str(err.value)
    return str(err.value)


# ------------------------------------------------------------------------------------------------- UNIMO
def test_unimo_starts_its_transformer_from_a_text_mlm_model(tmp_path: Path) -> None:
    src = save_untrained("text-mlm", BERT, V, tmp_path / "bert")
    bert = get_family("text-mlm").load(src).state_dict()
    fresh = build("unimo", UNIMO).state_dict()
    model = build("unimo", {**UNIMO, "text_init": str(src)})
    ours = model.state_dict()
    positions = model.config.max_position_embeddings
    assert positions == 32 < bert["bert.embeddings.position_embeddings.weight"].shape[0]  # BERT's 512: the first 32
    copied = 0
    for name, value in bert.items():
        if name.startswith(("bert.embeddings.", "bert.encoder.")) and name[len("bert."):] in ours:
            mine = ours[name[len("bert."):]]
            theirs = value[:positions] if name.endswith(("position_embeddings.weight", "position_ids")) else value
            assert torch.equal(mine, theirs), name
            copied += 1
    assert copied >= 2 + 16 * 2  # word/position/type embeddings + LayerNorm, every tensor of both layers
    for head, bert_name in (("dense.weight", "transform.dense.weight"), ("LayerNorm.bias", "transform.LayerNorm.bias"),
                            ("decoder.bias", "bias")):
        assert torch.equal(ours[f"lm_head.{head}"], bert[f"cls.predictions.{bert_name}"]), head
    # the LM decoder is still the word embedding table, now the source's
    assert model.lm_head.decoder.weight.data_ptr() == model.embeddings.word_embeddings.weight.data_ptr()
    assert torch.equal(model.lm_head.decoder.weight, bert["bert.embeddings.word_embeddings.weight"])
    # the image side starts exactly as without text_init (same seed), not from anything of the source
    image_parts = [n for n in ours if n.startswith(("image_embeddings.", "mim_head.", "logit_scale"))]
    assert image_parts and all(torch.equal(ours[n], fresh[n]) for n in image_parts)
    assert not torch.equal(fresh["encoder.layer.0.attention.self.query.weight"],
                           ours["encoder.layer.0.attention.self.query.weight"])


def test_unimo_text_init_misfits_are_one_line_errors(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM

    src = save_untrained("text-mlm", BERT, V, tmp_path / "bert")
    wide = save_untrained("text-mlm", {**BERT, "hidden_size": 64}, V, tmp_path / "wide")
    msg = one_line_error("its hidden_size is 64, the recipe's 32", "unimo", {**UNIMO, "text_init": str(wide)})
    assert str(wide) in msg
    one_line_error("its num_layers is 2, the recipe's 3", "unimo", {**UNIMO, "num_layers": 3, "text_init": str(src)})
    one_line_error(f"has a vocabulary of {V} tokens, this run's model {V + 4}", "unimo", {**UNIMO, "text_init": str(src)},
                   vocab=V + 4)
    short = save_untrained("text-mlm", {**BERT, "max_position_embeddings": 16}, V, tmp_path / "short")
    one_line_error("has 16 text positions, the recipe's max_position_embeddings is 32", "unimo",
                   {**UNIMO, "text_init": str(short)})
    # a Hugging Face folder is not taken as it is: it must be imported (a family file, a tokenizer) first
    hf = tmp_path / "hf-bert"
    BertForMaskedLM(BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=128)).save_pretrained(hf)
    one_line_error(r"text_init '.*hf-bert' is not a vlforge model .*import it first with: vlforge import model DIR "
                   "--family text-mlm", "unimo", {**UNIMO, "text_init": str(hf)})
    bart = save_untrained("text-bart", BART, V, tmp_path / "bart")
    one_line_error("holds a 'text-bart' model; unimo takes a text-mlm model as its text_init", "unimo",
                   {**UNIMO, "text_init": str(bart)})


# --------------------------------------------------------------------------------------- VL-T5 / VL-BART
def _backbone_checks(name: str, source: Path, source_family: str, sizes: dict, config: dict) -> torch.nn.Module:
    """The VL model from ``source``: the source's sizes (``sizes`` as recipe fields, ``config`` as the model
    config's), its weights everywhere it has them, its vocabulary rows then the region rows a model built from
    scratch with those sizes gets, the visual embedding fresh."""
    theirs = get_family(source_family).load(source).state_dict()
    model = build(name, {**VL, "text_init": str(source)})
    fresh = build(name, {**VL, **sizes})
    for field, value in config.items():
        assert getattr(model.config, field) == value, field
    ours, scratch = model.state_dict(), fresh.state_dict()
    assert ours.keys() == scratch.keys()
    vocab_tables = 0
    for key, value in theirs.items():
        mine = ours[key]
        if mine.shape == value.shape:
            assert torch.equal(mine, value), key
        elif "embed_positions" in key:  # BART: the first of its learned positions
            assert torch.equal(mine, value[: mine.shape[0]]), key
        else:  # a vocabulary table: the source's rows, then the region tokens' rows
            axis = -1 if key.endswith("final_logits_bias") else 0
            assert value.shape[axis] == V and mine.shape[axis] == V + model.num_regions, key
            assert torch.equal(mine.narrow(axis, 0, V), value), key
            assert torch.equal(mine.narrow(axis, V, model.num_regions), scratch[key].narrow(axis, V, model.num_regions)), key
            vocab_tables += 1
    assert vocab_tables >= 2
    visual = [k for k in ours if k.startswith("visual_embedding.")]
    assert visual and all(torch.equal(ours[k], scratch[k]) for k in visual)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    return model


def test_vl_t5_starts_from_a_text_t5_model(tmp_path: Path) -> None:
    src = save_untrained("text-t5", T5, V, tmp_path / "t5")
    sizes = {"d_model": 32, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 2, "num_heads": 2}
    model = _backbone_checks("vl-t5", src, "text-t5", sizes, {**sizes, "d_kv": 16})
    # and it trains: one task step gives a finite loss
    from test_vlt5 import scene_batch

    from vlforge.components.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

    recipe = get_family("vl-t5").recipe("tiny", {**VL, "text_init": str(src)})
    texts = [f"a red circle number {i} caption: image text match: true false" for i in range(30)]
    tokenizer = load_tokenizer(train_tokenizer(texts, tmp_path / "tok", TokenizerConfig(kind="wordpiece", vocab_size=V)))
    assert len(tokenizer) <= V
    out = get_family("vl-t5").training_step(model, scene_batch(recipe, tokenizer, n=4), recipe)
    assert torch.isfinite(out["loss"])


def test_vl_bart_starts_from_a_text_bart_model(tmp_path: Path) -> None:
    src = save_untrained("text-bart", BART, V, tmp_path / "bart")
    _backbone_checks("vl-bart", src, "text-bart",
                     {"d_model": 32, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 2, "num_heads": 2},
                     {"d_model": 32, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "encoder_layers": 1,
                      "decoder_layers": 2, "encoder_attention_heads": 2, "decoder_attention_heads": 2})


def test_vl_text_init_misfits_are_one_line_errors(tmp_path: Path) -> None:
    t5 = save_untrained("text-t5", T5, V, tmp_path / "t5")
    one_line_error(f"text_init '.*t5' has a vocabulary of {V} tokens, this run's tokenizer {V + 4}", "vl-t5",
                   {**VL, "text_init": str(t5)}, vocab=V + 4)
    untied = save_untrained("text-t5", {**T5, "tie_word_embeddings": False}, V, tmp_path / "untied")
    # transformers 5 builds it tied but without v1.0's decoder-output scaling: VL-T5's weights would mean another model
    one_line_error("text_init '.*untied' is a T5 v1.1-style model", "vl-t5", {**VL, "text_init": str(untied)})
    one_line_error("holds a 'text-t5' model; vl-bart takes a text-bart model as its text_init", "vl-bart",
                   {**VL, "text_init": str(t5)})
    short = save_untrained("text-bart", {**BART, "max_positions": 40}, V, tmp_path / "short")
    one_line_error("has 40 learned positions, the model 64 .*set max_position_embeddings to at most 40", "vl-bart",
                   {**VL, "text_init": str(short)})


def test_a_hugging_face_t5_imported_as_text_t5_starts_vl_t5(home: Path, tmp_path: Path) -> None:
    """The documented path: ``vlforge import model DIR --family text-t5`` (run_import), then text_init set to the
    catalog folder (what the train stage resolves ``catalog:REF`` to). An untied T5 (v1.1 layout) imports, but
    VL-T5 refuses it in one line."""
    from tiny_checkpoints import tiny_tokenizer
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from vlforge.catalog import Catalog
    from vlforge.components.stages.imports import run_import

    catalog = Catalog(home / "catalog")
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer(tmp_path / "tok"))
    imported = {}
    for name, extra in (("t5", {}), ("t5-v11", {"tie_word_embeddings": False, "feed_forward_proj": "gated-gelu"})):
        torch.manual_seed(0)
        source = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=32, d_kv=16, d_ff=64, num_layers=1,
                                                     num_decoder_layers=2, num_heads=2, **extra))
        if extra:  # a v1.1 checkpoint has its own LM head, which transformers then loads untied
            source.lm_head.weight = torch.nn.Parameter(torch.randn(64, 32))
        source.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        art = run_import(tmp_path / name, "text-t5", catalog, name=name).model.artifact
        imported[name] = (source, catalog.path(art.id), art)
    source, folder, art = imported["t5"]
    assert art.family == "text-t5" and art.config["values"]["feed_forward_proj"] == "relu"
    model = build("vl-t5", {**VL, "text_init": str(folder)}, vocab=64)
    assert (model.config.d_model, model.config.num_layers, model.config.num_decoder_layers) == (32, 1, 2)
    block = "decoder.block.1.layer.2.DenseReluDense.wo.weight"
    assert torch.equal(model.state_dict()[block], source.state_dict()[block])
    assert torch.equal(model.shared.weight[:64], source.shared.weight)
    v11, v11_folder, v11_art = imported["t5-v11"]
    assert v11_art.config["values"]["tie_word_embeddings"] is False
    assert v11_art.config["values"]["feed_forward_proj"] == "gated-gelu"
    assert torch.equal(get_family("text-t5").load(v11_folder).lm_head.weight, v11.lm_head.weight)  # its own head kept
    one_line_error("is a T5 v1.1-style model", "vl-t5", {**VL, "text_init": str(v11_folder)}, vocab=64)


def test_preflight_refuses_a_text_init_of_another_family_before_any_work(tokenizer, tmp_path: Path) -> None:
    """The family check runs in the families' preflight (the train stage calls it before Ray starts), without
    loading the weights."""
    bart = save_untrained("text-bart", BART, len(tokenizer), tmp_path / "bart")
    bert = save_untrained("text-mlm", BERT, len(tokenizer), tmp_path / "bert")
    for name, good, bad, wanted in (("unimo", bert, bart, "text-mlm"), ("vl-bart", bart, bert, "text-bart")):
        family = get_family(name)
        family.preflight(family.recipe("tiny", {"text_init": str(good)}), tokenizer)
        with pytest.raises(UserError, match=f"holds a '.*' model; {name} takes a {wanted} model as its text_init"):
            family.preflight(family.recipe("tiny", {"text_init": str(bad)}), tokenizer)
    vl_t5 = get_family("vl-t5")
    with pytest.raises(UserError, match="is not a vlforge model .*--family text-t5"):
        vl_t5.preflight(vl_t5.recipe("tiny", {"text_init": str(tmp_path)}), tokenizer)
