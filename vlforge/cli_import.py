"""``vlforge import model``: register a checkpoint vlforge did not train (a Hugging Face ``save_pretrained``
directory, an open_clip checkpoint) as a catalog model with its tokenizer (``components/stages/imports.py``).

    vlforge import model ./clip-vit-b32 --family clip --json
    vlforge import model epoch_32.pt --family clip --openclip-config ViT-B-32.json --tokenizer ./tok"""
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from vlforge.cli_common import JsonOpt, app, command, emit, open_catalog

import_app = typer.Typer(no_args_is_help=True, help="Register checkpoints vlforge did not train.")
app.add_typer(import_app, name="import")


@import_app.command("model")
@command
def import_model(
    out: Console,
    src: Annotated[Path, typer.Argument(help="A save_pretrained folder, a vlforge export, an open_clip hub folder, "
                                        "or an open_clip .pt/.safetensors file.")],
    family: Annotated[str, typer.Option(help="The family the model becomes: clip, text-mlm, text-lm, text-bart, "
                                         "text-t5, image-teacher for a Hugging Face folder; any family for a vlforge export.")],
    name: Annotated[Optional[str], typer.Option(help="Catalog name (default: FAMILY-<source name>).")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="Tokenizer folder, or open_clip's BPE vocabulary "
                                                       "(.txt.gz); default: SRC's own.")] = None,
    openclip_config: Annotated[Optional[Path], typer.Option("--openclip-config", help="open_clip model-config JSON "
                                                            "of a checkpoint file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register SRC as a catalog model of FAMILY, its tokenizer beside it; prints their ids."""
    from vlforge.components.stages.imports import run_import

    result = run_import(src, family, open_catalog(), name=name, tokenizer=tokenizer, openclip_config=openclip_config)
    model, tok = result.model.artifact, result.tokenizer.artifact

    def human() -> None:
        note = " (already in the catalog)" if result.model.cached else ""
        out.print(f"model {model.name}:{model.version} {model.short_id}, tokenizer {tok.name}:{tok.version} "
                  f"{tok.short_id}{note}", markup=False)

    emit(out, as_json, {"model": model.id, "tokenizer": tok.id}, human)
