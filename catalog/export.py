"""``vlforge catalog export``: write one artifact out of the catalog as a plain folder a person can hand on,
for a model a Hugging Face ``save_pretrained`` directory plus a model card (``README.md``).

A model's ``hf`` export is what plain transformers loads without vlforge: besides the weights and the tokenizer
files, a ``preprocessor_config.json`` (``components/models/convert/hf_processor.py``) that makes
``CLIPProcessor.from_pretrained(DIR)`` / ``AutoImageProcessor`` give vlforge's pixels, and a tokenizer whose
``model_max_length`` is the model's text length, so ``truncation=True, padding="max_length"`` gives vlforge's
tokens. A family whose model type transformers does not ship (UNIMO, VLMo, UniT, the unified model, CLIP with a
pretrained text tower) also gets its modeling code and an ``auto_map`` (``convert/remote_code.py``), so
``AutoModel.from_pretrained(DIR, trust_remote_code=True)`` loads it without vlforge. The ``open_clip`` export (CLIP models) is ``open_clip_config.json`` + ``open_clip_model.safetensors``
(``components/models/convert/open_clip.py``) beside the same tokenizer files.

Where it sits: the end of the DAG, after evaluation. The card is assembled from the catalog alone: what the
model is (family, recipe), the data it was trained on (its dataset ancestors), the training config, its metrics
and those of every evaluation made from it, its lineage, the environment that made it and the data's licence.
The folder is built under a temporary name beside the target and renamed into place, so it appears whole or
not at all.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from vlforge.catalog.blobs import remove_tree
from vlforge.catalog.store import Artifact, Catalog
from vlforge.errors import UserError

FORMATS = ("hf", "open_clip")

__all__ = ["FORMATS", "export", "model_card"]

_UNKNOWN_LICENCE = ("not recorded by the source: the images and captions keep their owners' terms; check them "
                    "before redistributing this model or its data")


def _licence(dataset: Artifact) -> str:
    source = dataset.config.get("source", {}) if isinstance(dataset.config, dict) else {}
    for key in ("license", "licence"):
        for holder in (source, dataset.config):
            if isinstance(holder, dict) and isinstance(holder.get(key), str):
                return holder[key]
    return _UNKNOWN_LICENCE


def _fence(text: str) -> str:
    """A fenced block that the text inside cannot close early."""
    ticks = "`" * max(3, max((len(run) for run in text.split("\n") if set(run) == {"`"}), default=0) + 1)
    return f"{ticks}\n{text}\n{ticks}"


def model_card(catalog: Catalog, artifact: Artifact) -> str:
    """The Markdown card for ``artifact`` (Hugging Face front matter, then prose and tables)."""
    ancestors = catalog.ancestors(artifact.id)
    datasets = [a for a in ancestors if a.kind == "dataset"]
    evals = [d for d in catalog.descendants(artifact.id) if d.kind == "eval"]
    licences = sorted({_licence(d) for d in datasets}) or [_UNKNOWN_LICENCE]
    front = {"library_name": "transformers", "tags": ["vlforge", artifact.kind, *( [artifact.family] if artifact.family else [])],
             "datasets": [d.name for d in datasets]}
    lines = ["---", *(f"{key}: {json.dumps(value)}" for key, value in front.items()), "---", "",
             f"# {artifact.name} (version {artifact.version})", "",
             f"A `{artifact.kind}` artifact from the vlforge catalog, id `{artifact.id}`."]
    if artifact.family:
        recipe = artifact.config.get("recipe") if isinstance(artifact.config, dict) else None
        origin = artifact.config.get("origin") if isinstance(artifact.config, dict) else None
        made = (f", imported from a {origin.get('format')} checkpoint (`{origin.get('path')}`)" if isinstance(origin, dict)
                else (f", recipe `{recipe}`" if recipe else "") + ", pretrained from scratch by vlforge's Ray Train loop")
        lines.append(f"A **{artifact.family}** vision-language model{made}. Load it with the family's "
                     "`from_pretrained` on this folder (weights are safetensors).")
    lines += ["", "## Data", ""]
    if datasets:
        lines += ["| dataset | version | id | samples | source |", "|---|---|---|---|---|"]
        for d in datasets:
            spec = d.config.get("source", {}).get("spec", "") if isinstance(d.config.get("source"), dict) else ""
            lines.append(f"| {d.name} | {d.version} | `{d.short_id}` | {d.metrics.get('samples', '')} | `{spec}` |")
    else:
        lines.append("No dataset is recorded in this artifact's lineage.")
    lines += ["", "## Licence of the data", "", *(f"- {text}" for text in licences),
              "", "## Training config", "", _fence(json.dumps(artifact.config, indent=2, sort_keys=True)),
              "", "## Metrics", ""]
    rows = [(artifact.name, key, value) for key, value in sorted(artifact.metrics.items())]
    rows += [(f"{e.name}:{e.version}", key, value) for e in evals for key, value in sorted(e.metrics.items())]
    if rows:
        lines += ["| from | metric | value |", "|---|---|---|", *(f"| {w} | {k} | {v} |" for w, k, v in rows)]
    else:
        lines.append("No metrics recorded.")
    lines += ["", "## Lineage", "", f"- {artifact.kind} {artifact.name}:{artifact.version} `{artifact.short_id}`"]
    lines += [f"  - made from {a.kind} {a.name}:{a.version} `{a.short_id}`" for a in ancestors]
    lines += ["", "## Environment", "", f"- code version: `{artifact.code_version or 'unknown'}`",
              f"- registered: {artifact.created_at}",
              *(f"- {name} {version}" for name, version in sorted(artifact.packages.items())), ""]
    return "\n".join(lines)


def _model_extras(family: str, view: Path, building: Path, fmt: str) -> None:
    """Write what a model's export adds beside its files: the preprocessing, the tokenizer's text length, and for
    ``open_clip`` the converted checkpoint in place of the Hugging Face one."""
    from vlforge.components.models.convert.hf_processor import (
        PREPROCESSOR_FILE,
        image_processor_config,
        model_preprocessing,
        takes_images,
    )
    from vlforge.components.models.registry import FAMILY_FILE

    pre = model_preprocessing(view)
    if takes_images(family):
        (building / PREPROCESSOR_FILE).write_text(json.dumps(image_processor_config(pre), indent=2, sort_keys=True) + "\n")
    recipe = json.loads((view / FAMILY_FILE).read_text()).get("recipe", {})
    tok_config = building / "tokenizer_config.json"
    if tok_config.is_file() and "max_text_length" in recipe:
        config = json.loads(tok_config.read_text())
        config["model_max_length"] = recipe["max_text_length"]
        tok_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if fmt == "hf":
        from vlforge.components.models.convert.remote_code import write_remote_code

        write_remote_code(view, building)
    if fmt == "open_clip":
        from vlforge.components.models.convert.open_clip import write_open_clip

        write_open_clip(view, building, pre)
        _point_open_clip_at_tokenizer(building)


# open_clip's own BPE, as an import of an open_clip checkpoint carries it (convert/open_clip.py bpe_vocab_tokenizer)
_OPEN_CLIP_BOS = "<start_of_text>"


def _point_open_clip_at_tokenizer(building: Path) -> None:
    """Make open_clip's ``get_tokenizer("local-dir:DIR")`` read the export's own tokenizer files. Without
    ``text_cfg.hf_tokenizer_name`` it falls back to its ``SimpleTokenizer`` (OpenAI's 49,408-token BPE), whose ids
    index past a vlforge-trained model's vocabulary. With a ``local-dir:`` load the value is not read (open_clip
    takes the folder itself), so it is "." (this folder); one pushing the folder to a hub sets the repo id. An
    import of open_clip's own BPE keeps the fallback: SimpleTokenizer gives its exact ids, padding included."""
    from vlforge.components.models.convert.open_clip import OPEN_CLIP_CONFIG

    tok_config = building / "tokenizer_config.json"
    if not (building / "tokenizer.json").is_file() or not tok_config.is_file():
        return
    bos = json.loads(tok_config.read_text()).get("bos_token")
    if (bos.get("content") if isinstance(bos, dict) else bos) == _OPEN_CLIP_BOS:
        return
    path = building / OPEN_CLIP_CONFIG
    config = json.loads(path.read_text())
    config["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = "."
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def export(catalog: Catalog, ref: str, target: Path | str, fmt: str = "hf") -> Path:
    """Copy the artifact ``ref`` names into ``target`` (which must not exist or be empty) with a model card
    as ``README.md`` (an artifact's own README is kept below the card); a model gets its ``fmt`` extras (module
    docstring). Every file is checked against its recorded hash on the way out. Returns the folder."""
    if fmt not in FORMATS:
        raise UserError(f"--format '{fmt}' is not one of {', '.join(FORMATS)}")
    artifact = catalog.get(ref)
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"cannot export {ref!r} to '{target}': it exists and is not an empty folder")
    if not target.parent.is_dir():
        raise UserError(f"cannot export {ref!r} to '{target}': the parent folder '{target.parent}' does not exist")
    if fmt == "open_clip" and artifact.family != "clip":
        raise UserError(f"cannot export {ref!r} as open_clip: it is a {artifact.family or artifact.kind} "
                        f"{artifact.kind}, not a clip model")
    view = catalog.path(artifact.id)  # verifies the blobs
    building = target.parent / f".{target.name}.export-{uuid.uuid4().hex[:8]}"
    try:
        building.mkdir()
        for entry in artifact.files:
            out = building / entry.path
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(view / entry.path, out)
            os.chmod(out, 0o644)
        if artifact.kind == "model" and (view / "vlforge_family.json").is_file():
            _model_extras(artifact.family or "", view, building, fmt)
        card = model_card(catalog, artifact)
        original = building / "README.md"
        if original.exists():
            card += "\n## The artifact's own README\n\n" + original.read_text(encoding="utf-8", errors="replace")
        original.write_text(card, encoding="utf-8")
        if target.exists():
            target.rmdir()
        os.rename(building, target)
    finally:
        remove_tree(building)
    return target
