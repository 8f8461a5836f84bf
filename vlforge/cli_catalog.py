"""``vlforge catalog ...``: browse and look after the artifact catalog: list/show/lineage/diff, aliases and tags,
verify/gc, push/pull to the remote blob store, export and the read-only web browser (``serve``)."""
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from vlforge.catalog import Query
from vlforge.cli_common import JsonOpt, catalog_app, command, emit, open_catalog
from vlforge.errors import UserError


# ----------------------------------------------------------------------------------------------- catalog
def _entry(art: Any) -> dict[str, Any]:
    return art.model_dump(mode="json") | {"short_id": art.short_id}


def _metric_thresholds(pairs: list[str]) -> tuple[tuple[str, float], ...]:
    thresholds = []
    for pair in pairs:
        key, eq, value = pair.partition("=")
        try:
            if not eq or not key:
                raise ValueError
            thresholds.append((key, float(value)))
        except ValueError:
            raise UserError(f"--metric-above '{pair}' must be METRIC=NUMBER, e.g. i2t_r1=0.5") from None
    return tuple(thresholds)


@catalog_app.command("list")
@command
def catalog_list(
    out: Console,
    kind: Annotated[Optional[str], typer.Option(help="dataset, tokenizer, model or eval.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Only this name.")] = None,
    family: Annotated[Optional[str], typer.Option(help="Only this model family.")] = None,
    search: Annotated[Optional[str], typer.Option("--search", "-q", help="Substring of name/family, or id prefix.")] = None,
    tag: Annotated[Optional[str], typer.Option(help="Only artifacts with this tag.")] = None,
    alias: Annotated[Optional[str], typer.Option(help="Only artifacts an alias of this name points at.")] = None,
    since: Annotated[Optional[str], typer.Option(help="Created at or after this ISO time (UTC).")] = None,
    metric_above: Annotated[Optional[list[str]], typer.Option("--metric-above", help="METRIC=NUMBER (repeatable).")] = None,
    sort: Annotated[Optional[str], typer.Option(help="Order by this metric, highest first.")] = None,
    ascending: Annotated[bool, typer.Option("--asc", help="With --sort: lowest first.")] = False,
    limit: Annotated[Optional[int], typer.Option(help="At most this many.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List artifacts, newest first (or by a metric), filtered."""
    if kind is not None and kind not in ("dataset", "tokenizer", "model", "eval"):
        raise UserError(f"--kind '{kind}' is not one of dataset, tokenizer, model, eval")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit} must be at least 1")
    query = Query(kind=kind, name=name, family=family, text=search, tag=tag, alias=alias, since=since,
                  metric_above=_metric_thresholds(metric_above or []), sort_metric=sort, ascending=ascending)
    arts = open_catalog().search(query, limit=limit)

    def human() -> None:
        table = Table(title=f"catalog ({len(arts)} artifacts)")
        show_tags = any(a.tags for a in arts)  # keep the table narrow when nobody tags
        for col in ("id", "kind", "name", "version", "family", "aliases", *(["tags"] if show_tags else []), "created",
                    "headline"):
            table.add_column(col)
        keys = ("final_loss", "samples", "vocab_size")  # what a dataset, tokenizer or model run measured
        if any(a.kind == "eval" for a in arts):
            from vlforge.components.evaluation.headline import headline_metrics  # loads the task registry
        for a in arts:
            shown = [k for k, _v in headline_metrics(a.metrics, a.config.get("tasks", []))] if a.kind == "eval" \
                else list(keys)
            headline = ", ".join(f"{k}={a.metrics[k]:.3g}" for k in dict.fromkeys([*shown, *([sort] if sort else [])])
                                 if isinstance(a.metrics.get(k), (int, float)))
            table.add_row(a.short_id, a.kind, a.name, str(a.version), a.family or "", ",".join(a.aliases),
                          *([",".join(a.tags)] if show_tags else []), a.created_at[:19], headline)
        out.print(table)

    emit(out, as_json, [_entry(a) for a in arts], human)


@catalog_app.command("show")
@command
def catalog_show(out: Console, ref: Annotated[str, typer.Argument(help="Artifact REF.")], as_json: JsonOpt = False) -> None:
    """Show one artifact: files, config, metrics, parents, environment."""
    catalog = open_catalog()
    art = catalog.get(ref)
    path = catalog.path(art.id)
    card_file = next((path / f.path for f in art.files if f.path.lower() == "readme.md"), None)
    card = card_file.read_text(encoding="utf-8", errors="replace") if card_file else None
    entry = _entry(art) | {"path": str(path), "card": card}

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
        out.print(f"tags: {', '.join(art.tags) or '-'}")
        out.print("environment:", json.dumps(art.packages, indent=2, sort_keys=True), markup=False)
        if card:
            out.print("card:", markup=False)
            out.print(card, markup=False, highlight=False)

    emit(out, as_json, entry, human)


@catalog_app.command("lineage")
@command
def catalog_lineage(out: Console, ref: Annotated[str, typer.Argument(help="Artifact REF.")], as_json: JsonOpt = False) -> None:
    """What an artifact came from (a tree of parents) and what was made from it."""
    catalog = open_catalog()
    tree_data = catalog.lineage_tree(ref)
    descendants = catalog.descendants(ref)
    down_tree = catalog.descendants_tree(ref)

    def to_json(node: dict) -> dict:
        a = node["artifact"]
        return {"id": a.id, "kind": a.kind, "name": a.name, "version": a.version, "parents": [to_json(p) for p in node["parents"]]}

    def label(a: Any) -> str:
        return f"{a.kind} [bold]{a.name}[/bold]:{a.version} {a.short_id}"

    def down_json(node: dict) -> dict:
        a = node["artifact"]
        return {"id": a.id, "kind": a.kind, "name": a.name, "version": a.version,
                "children": [down_json(c) for c in node["children"]]}

    def human() -> None:
        def add(tree: Tree, node: dict, key: str) -> None:
            for p in node[key]:
                add(tree.add(label(p["artifact"])), p, key)

        root = Tree(label(tree_data["artifact"]) + "  [dim](made from)[/dim]")
        add(root, tree_data, "parents")
        out.print(root)
        if descendants:
            down = Tree(label(tree_data["artifact"]) + "  [dim](made from it)[/dim]")
            add(down, down_tree, "children")
            out.print(down)

    emit(out, as_json, {"tree": to_json(tree_data), "descendants": [d.id for d in descendants],
                        "children": down_json(down_tree)}, human)




# ----------------------------------------------------------------------------------------------- diff
def diff_artifacts(a: Any, b: Any) -> dict[str, Any]:
    """What differs between two artifacts: config keys, metrics (with the change), parents and files."""
    from vlforge.catalog.web import flatten  # the web module imports the evaluation layer (torch): only here

    ca, cb = flatten(a.config), flatten(b.config)
    config = {k: [ca.get(k), cb.get(k)] for k in sorted(ca.keys() | cb.keys()) if ca.get(k, ...) != cb.get(k, ...)}
    metrics: dict[str, Any] = {}
    for k in sorted(a.metrics.keys() | b.metrics.keys()):
        va, vb = a.metrics.get(k), b.metrics.get(k)
        if va != vb:
            delta = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
            metrics[k] = {"a": va, "b": vb, "delta": delta}
    fa, fb = {f.path: f.sha256 for f in a.files}, {f.path: f.sha256 for f in b.files}
    return {
        "a": a.id, "b": b.id, "config": config, "metrics": metrics,
        "parents": {"only_a": [p for p in a.parents if p not in b.parents],
                    "only_b": [p for p in b.parents if p not in a.parents],
                    "common": [p for p in a.parents if p in b.parents]},
        "files": {"only_a": sorted(fa.keys() - fb.keys()), "only_b": sorted(fb.keys() - fa.keys()),
                  "changed": sorted(k for k in fa.keys() & fb.keys() if fa[k] != fb[k])},
    }


@catalog_app.command("diff")
@command
def catalog_diff(out: Console, ref_a: Annotated[str, typer.Argument(help="First REF.")],
                 ref_b: Annotated[str, typer.Argument(help="Second REF.")], as_json: JsonOpt = False) -> None:
    """Compare two artifacts: config, metrics, parents, files."""
    catalog = open_catalog()
    a, b = catalog.get(ref_a), catalog.get(ref_b)
    result = diff_artifacts(a, b)

    def human() -> None:
        out.print(f"a: {a.kind} {a.name}:{a.version} {a.short_id}\nb: {b.kind} {b.name}:{b.version} {b.short_id}",
                  markup=False)
        table = Table(title="config")
        for col in ("key", "a", "b"):
            table.add_column(col)
        for k, (va, vb) in result["config"].items():
            table.add_row(k, json.dumps(va), json.dumps(vb))
        out.print(table)
        table = Table(title="metrics")
        for col in ("metric", "a", "b", "change"):
            table.add_column(col)
        for k, m in result["metrics"].items():
            table.add_row(k, str(m["a"]), str(m["b"]), "" if m["delta"] is None else f"{m['delta']:+.4g}")
        out.print(table)
        for side in ("only_a", "only_b"):
            for p in result["parents"][side]:
                out.print(f"parent {side.replace('_', ' in ')}: {p[:12]}")
        for key, items in result["files"].items():
            if items:
                out.print(f"files {key.replace('_', ' in ')}: {', '.join(items)}", markup=False)

    emit(out, as_json, result, human)


# --------------------------------------------------------------------------------------- aliases, tags
alias_app = typer.Typer(no_args_is_help=True, help="Move or remove hand-set aliases (production, staging, ...).")
catalog_app.add_typer(alias_app, name="alias")


@alias_app.command("set")
@command
def alias_set(out: Console, alias: Annotated[str, typer.Argument(help="Alias, e.g. production.")],
              ref: Annotated[str, typer.Argument(help="Artifact REF it should point at.")], as_json: JsonOpt = False) -> None:
    """Point NAME@ALIAS at the artifact REF names (NAME is that artifact's name)."""
    catalog = open_catalog()
    art = catalog.get(ref)
    catalog.set_alias(art.name, alias, art.id)
    emit(out, as_json, {"alias": f"{art.name}@{alias}", "id": art.id},
         lambda: out.print(f"{art.name}@{alias} -> {art.name}:{art.version} {art.short_id}", markup=False))


@alias_app.command("rm")
@command
def alias_rm(out: Console, alias: Annotated[str, typer.Argument(help="Alias to remove.")],
             name: Annotated[str, typer.Argument(help="Artifact name it belongs to.")], as_json: JsonOpt = False) -> None:
    """Remove NAME@ALIAS ('latest' cannot be removed)."""
    was = open_catalog().remove_alias(name, alias)
    emit(out, as_json, {"alias": f"{name}@{alias}", "removed": was},
         lambda: out.print(f"removed {name}@{alias} (was {was[:12]})", markup=False))


@catalog_app.command("tag")
@command
def catalog_tag(out: Console, ref: Annotated[str, typer.Argument(help="Artifact REF.")],
                tags: Annotated[list[str], typer.Argument(help="Tags to add (or remove with --rm).")],
                remove: Annotated[bool, typer.Option("--rm", help="Remove these tags instead.")] = False,
                as_json: JsonOpt = False) -> None:
    """Add or remove free labels on an artifact."""
    art = open_catalog().tag(ref, tags, remove=remove)
    emit(out, as_json, {"id": art.id, "tags": art.tags},
         lambda: out.print(f"{art.name}:{art.version} tags: {', '.join(art.tags) or '-'}", markup=False))


# ---------------------------------------------------------------------------------------- maintenance
@catalog_app.command("verify")
@command
def catalog_verify(out: Console, as_json: JsonOpt = False) -> None:
    """Re-hash every stored file; exit code 1 if any is missing (locally and on the remote) or corrupt."""
    from vlforge.catalog.maintenance import verify as verify_catalog

    report = verify_catalog(open_catalog())
    payload = {"ok": report.ok, "files": report.files, "bytes": report.bytes, "remote_only": report.remote_only,
               "problems": [vars(p) for p in report.problems]}

    def human() -> None:
        remote = f" ({report.remote_only} more only on the remote)" if report.remote_only else ""
        out.print(f"checked {report.files} files, {report.bytes:,} bytes{remote}: "
                  f"{'all intact' if report.ok else f'{len(report.problems)} problem(s)'}")
        for p in report.problems:
            out.print(f"{p.status}: {p.path} (held by {'; '.join(p.artifacts)})", markup=False)

    emit(out, as_json, payload, human)
    if not report.ok:
        raise typer.Exit(1)


@catalog_app.command("gc")
@command
def catalog_gc(out: Console, dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report.")] = False,
               as_json: JsonOpt = False) -> None:
    """Remove blobs no artifact references and scratch files of dead writers."""
    from vlforge.catalog.maintenance import gc as gc_catalog

    report = gc_catalog(open_catalog(), dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    emit(out, as_json, vars(report),
         lambda: out.print(f"{verb} {len(report.blobs)} blobs and {len(report.scratch)} scratch files, "
                           f"{report.bytes:,} bytes"))


# --------------------------------------------------------------------------------------------- remote
@catalog_app.command("push")
@command
def catalog_push(out: Console, refs: Annotated[Optional[list[str]], typer.Argument(help="Artifact REFs (default: all).")] = None,
                 as_json: JsonOpt = False) -> None:
    """Upload artifacts' blobs to the catalog remote (VLFORGE_CATALOG_REMOTE) that it does not hold yet."""
    report = open_catalog().push(refs or [])
    emit(out, as_json, report,
         lambda: out.print(f"{report['artifacts']} artifacts: uploaded {report['uploaded']} blobs "
                           f"({report['bytes']:,} bytes), {report['present']} already on the remote"))


@catalog_app.command("pull")
@command
def catalog_pull(out: Console, refs: Annotated[list[str], typer.Argument(help="Artifact REFs.")],
                 as_json: JsonOpt = False) -> None:
    """Fetch artifacts' blobs from the catalog remote into the local cache, checking each one's sha256."""
    catalog = open_catalog()
    pulled = [catalog.pull(ref) for ref in refs]

    def human() -> None:
        for p in pulled:
            out.print(f"{p['name']}:{p['version']} {p['id'][:12]}: fetched {p['fetched']} blobs "
                      f"({p['bytes']:,} bytes) -> {p['path']}", markup=False)

    emit(out, as_json, pulled, human)


@catalog_app.command("export")
@command
def catalog_export(out: Console, ref: Annotated[str, typer.Argument(help="Artifact REF.")],
                   target: Annotated[Path, typer.Argument(help="Folder to create (must not exist or be empty).")],
                   fmt: Annotated[str, typer.Option("--format", help="hf (transformers loads it, processor "
                                                    "included) or open_clip (CLIP models).")] = "hf",
                   as_json: JsonOpt = False) -> None:
    """Write an artifact out as a plain folder (a model: a Hugging Face directory) with a model card."""
    from vlforge.catalog.export import export as export_artifact

    folder = export_artifact(open_catalog(), ref, target, fmt)
    emit(out, as_json, {"path": str(folder.resolve())}, lambda: out.print(f"exported to {folder}", markup=False))


@catalog_app.command("serve")
@command
def catalog_serve(out: Console, host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
                  port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8765) -> None:
    """Serve a read-only web browser of the catalog until interrupted."""
    from vlforge.catalog.web import make_server

    server = make_server(open_catalog(), host, port)
    out.print(f"serving the catalog on http://{server.server_address[0]}:{server.server_address[1]}/", markup=False)
    out.file.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
