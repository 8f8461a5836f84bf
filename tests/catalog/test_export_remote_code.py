"""``vlforge catalog export`` of a family with its own transformers model type: the export carries its modeling
code and an ``auto_map``, and ``AutoModel.from_pretrained(DIR, trust_remote_code=True)`` in a process that cannot
import vlforge gives the same network (weights and outputs)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_checkpoints import tiny_tokenizer
from vlforge.catalog import Catalog
from vlforge.catalog.export import export
from vlforge.components.models.convert.remote_code import remote_code
from vlforge.components.models.registry import get_family, read_family_file, special_token_ids, unwrap
from vlforge.components.tokenizer import copy_tokenizer, load_tokenizer
from vlforge.errors import UserError

# family -> (recipe overrides, the output compared: an expression of `model`, `ids`, `mask`, `pix`)
CASES = {
    "vlmo": ({}, "model.itm_logits(ids, mask, pix)"),
    "unimo": ({}, "model.text_features(ids, mask)"),
    "unit": ({"detection_queries": 4}, "model.task_logits('itm', pixel_values=pix, input_ids=ids, attention_mask=mask)"),
    "unified": ({}, "model.encode_image(pix)"),
    "clip": ({"text_pooler": "mean"}, "model.get_image_features(pix).pooler_output"),
}

LOADER = r'''
import importlib.abc, json, sys
from pathlib import Path

class NoVlforge(importlib.abc.MetaPathFinder):  # this process is a user's without vlforge
    def find_spec(self, name, path=None, target=None):
        if name == "vlforge" or name.startswith("vlforge."):
            raise ImportError(f"vlforge is not installed here ({name})")

sys.meta_path.insert(0, NoVlforge())
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel

out, work, expression = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
AutoConfig.from_pretrained(out, trust_remote_code=True)
model = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
ref = load_file(work / "state.safetensors")
mine = model.state_dict()
inputs = load_file(work / "inputs.safetensors")
ids, mask, pix = inputs["ids"], inputs["mask"], inputs["pix"]
with torch.no_grad():
    value = eval(expression)
value = value[0] if isinstance(value, tuple) else value
print(json.dumps({"module": type(model).__module__, "class": type(model).__name__,
                  "missing": sorted(set(ref) - set(mine)), "extra": sorted(set(mine) - set(ref)),
                  "max_weight_diff": max(float((mine[k] - ref[k]).abs().max()) for k in ref if k in mine),
                  "output": value.tolist()}))
'''


def _tiny_bert(folder: Path, tok_dir: Path) -> Path:
    """A tiny BERT text tower saved with the test's tokenizer (its vocabulary and special ids)."""
    from transformers import BertConfig, BertModel

    tok = load_tokenizer(tok_dir)
    torch.manual_seed(3)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=32,
                         pad_token_id=tok.pad_token_id)).save_pretrained(folder)
    copy_tokenizer(tok_dir, folder)
    return folder


@pytest.mark.parametrize("family_name", list(CASES))
def test_export_loads_with_auto_model_and_remote_code_alone(family_name: str, home: Path, tmp_path: Path) -> None:
    overrides, expression = CASES[family_name]
    catalog = Catalog(home / "catalog")
    tok_dir = tiny_tokenizer(tmp_path / "tok", max_length=32)
    tok = load_tokenizer(tok_dir)
    family = get_family(family_name)
    if family_name == "clip":
        overrides = {**overrides, "text_tower": str(_tiny_bert(tmp_path / "bert", tok_dir))}
    recipe = family.recipe("tiny", overrides)
    torch.manual_seed(0)
    folder = tmp_path / "model"
    family.save(family.build_model(recipe, len(tok), special_token_ids(tok)), folder, recipe)
    copy_tokenizer(tok_dir, folder)
    artifact = catalog.register(kind="model", name=f"{family_name}-tiny", family=family_name, files=folder,
                                config={"family": family_name, "recipe": "tiny", "values": recipe.model_dump()})

    out = export(catalog, artifact.id, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel"}
    for target in config["auto_map"].values():
        assert (out / f"{target.split('.')[0]}.py").is_file()
    assert not any("from vlforge" in p.read_text() for p in out.glob("*.py"))

    _, loaded_recipe = read_family_file(catalog.path(artifact.id))
    model = unwrap(family.load(catalog.path(artifact.id))).eval()
    gen = torch.Generator().manual_seed(0)
    enc = tok(["a red circle", "two blue squares"], padding="max_length", truncation=True,
              max_length=loaded_recipe.max_text_length, return_tensors="pt")
    inputs = {"ids": enc["input_ids"], "mask": enc["attention_mask"],
              "pix": torch.randn(2, 3, loaded_recipe.image_size, loaded_recipe.image_size, generator=gen)}
    work = tmp_path / "work"
    work.mkdir()
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(work / "state.safetensors"))
    save_file(inputs, str(work / "inputs.safetensors"))
    ids, mask, pix = inputs["ids"], inputs["mask"], inputs["pix"]
    with torch.no_grad():
        ours = eval(expression)  # noqa: S307 - the test's own expressions
    ours = ours[0] if isinstance(ours, tuple) else ours

    proc = subprocess.run([sys.executable, "-c", LOADER, str(out), str(work), expression], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                                                     "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["module"].startswith("transformers_modules.") and got["class"] == config["architectures"][0]
    assert got["missing"] == [] and got["extra"] == [] and got["max_weight_diff"] == 0.0
    assert (torch.tensor(got["output"]) - ours).abs().max() < 1e-5


def test_types_transformers_ships_need_no_remote_code() -> None:
    get_family("clip")
    with pytest.raises(UserError, match="model type 'clip' ships with transformers"):
        remote_code("clip")
    with pytest.raises(UserError, match="model type 'nope' is unknown"):
        remote_code("nope")
