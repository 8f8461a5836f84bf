"""``vlforge catalog ...``: browse the artifact catalog (list, show, lineage)."""
import json
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from vlforge.cli_common import JsonOpt, catalog_app, command, emit, open_catalog
from vlforge.errors import UserError


# ----------------------------------------------------------------------------------------------- catalog
def _entry(art: Any) -> dict[str, Any]:
    return art.model_dump(mode="json") | {"short_id": art.short_id}


@catalog_app.command("list")
@command
def catalog_list(
    out: Console,
    kind: Annotated[Optional[str], typer.Option(help="dataset, tokenizer, model or eval.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Only this name.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List artifacts, newest first."""
    if kind is not None and kind not in ("dataset", "tokenizer", "model", "eval"):
        raise UserError(f"--kind '{kind}' is not one of dataset, tokenizer, model, eval")
    arts = open_catalog().list(kind=kind, name=name)

    def human() -> None:
        table = Table(title=f"catalog ({len(arts)} artifacts)")
        for col in ("id", "kind", "name", "version", "family", "aliases", "created", "headline"):
            table.add_column(col)
        for a in arts:
            headline = ", ".join(f"{k}={a.metrics[k]:.3g}" for k in ("i2t_r1", "t2i_r1", "final_loss", "samples", "vocab_size")
                                 if isinstance(a.metrics.get(k), (int, float)))
            table.add_row(a.short_id, a.kind, a.name, str(a.version), a.family or "", ",".join(a.aliases), a.created_at[:19], headline)
        out.print(table)

    emit(out, as_json, [_entry(a) for a in arts], human)


@catalog_app.command("show")
@command
def catalog_show(out: Console, ref: Annotated[str, typer.Argument(help="Artifact REF.")], as_json: JsonOpt = False) -> None:
    """Show one artifact: files, config, metrics, parents, environment."""
    catalog = open_catalog()
    art = catalog.get(ref)
    entry = _entry(art) | {"path": str(catalog.path(art.id))}

    def human() -> None:
        out.print(f"[bold]{art.kind} {art.name}:{art.version}[/bold]  {art.id}")
        out.print(f"family: {art.family or '-'}   aliases: {', '.join(art.aliases) or '-'}   created: {art.created_at}")
        out.print(f"code: {art.code_version or 'unknown'}   files at: {entry['path']}")
        for p in art.parents:
            parent = catalog.get(p)
            out.print(f"parent: {parent.kind} {parent.name}:{parent.version} {parent.short_id}")
        table = Table(title="files")
        table.add_column("path")
        table.add_column("bytes", justify="right")
        table.add_column("sha256")
        for f in art.files:
            table.add_row(f.path, str(f.size), f.sha256[:16])
        out.print(table)
        out.print("config:", json.dumps(art.config, indent=2, sort_keys=True), markup=False)
        out.print("metrics:", json.dumps(art.metrics, indent=2, sort_keys=True), markup=False)

    emit(out, as_json, entry, human)


@catalog_app.command("lineage")
@command
def catalog_lineage(out: Console, ref: Annotated[str, typer.Argument(help="Artifact REF.")], as_json: JsonOpt = False) -> None:
    """What an artifact came from (a tree of parents) and what was made from it."""
    catalog = open_catalog()
    tree_data = catalog.lineage_tree(ref)
    descendants = catalog.descendants(ref)

    def to_json(node: dict) -> dict:
        a = node["artifact"]
        return {"id": a.id, "kind": a.kind, "name": a.name, "version": a.version, "parents": [to_json(p) for p in node["parents"]]}

    def label(a: Any) -> str:
        return f"{a.kind} [bold]{a.name}[/bold]:{a.version} {a.short_id}"

    def human() -> None:
        def add(tree: Tree, node: dict) -> None:
            for p in node["parents"]:
                add(tree.add(label(p["artifact"])), p)

        root = Tree(label(tree_data["artifact"]) + "  [dim](made from)[/dim]")
        add(root, tree_data)
        out.print(root)
        if descendants:
            down = Tree("[dim]made from it[/dim]")
            for d in descendants:
                down.add(label(d))
            out.print(down)

    emit(out, as_json, {"tree": to_json(tree_data), "descendants": [d.id for d in descendants]}, human)


