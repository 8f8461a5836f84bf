"""Cache keys: a stage's inputs (artifact ids) + its config + a fingerprint of the code it really runs.

The code is the import closure, within vlforge, of the stage's entry module, computed from the sources with
``ast`` rather than listed by hand: every ``import vlforge...`` / ``from vlforge... import`` (relative ones too,
and those inside functions, which is where the heavy imports live), followed transitively. A name imported from a
package is followed to the module that defines it when the package re-exports it, so importing one function from
``vlforge.components.stages`` does not pull in every stage. Parent packages' ``__init__`` files are hashed (they
run) but their imports are not followed unless something is imported from them.

Code the closure cannot see is added by the stage that runs it: the trained or evaluated model's family package
(families are loaded by name through the registry, so one family's edit never touches another family's keys),
the families of the models a recipe loads (teachers, towers, ``init_from``), the evaluation tasks' runner
modules. The catalog, the flows and the CLI only store, wire and print what a stage makes, so they are left out:
an edit there re-runs nothing."""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parents[2]
# vlforge.components, .flows and .catalog live in top-level folders of the repository (setup.py maps them), or
# inside vlforge/ once installed from a wheel
MAPPED = ("components", "flows", "catalog")
# bookkeeping and wiring: they cannot change what a stage makes
NOT_STAGE_CODE = ("vlforge.catalog", "vlforge.flows", "vlforge.cli")
# data files beside a family's code that it reads (its recipes)
FAMILY_DATA = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Layout:
    """Where vlforge's packages are on disk: package name -> folder."""

    roots: tuple[tuple[str, Path], ...]

    @classmethod
    def of(cls, vlforge_dir: Path, mapped: dict[str, Path] | None = None) -> Layout:
        mapped = mapped or {}
        roots = [(f"vlforge.{m}", mapped.get(m) or (vlforge_dir / m if (vlforge_dir / m).is_dir() else vlforge_dir.parent / m))
                 for m in MAPPED]
        return cls((*roots, ("vlforge", vlforge_dir)))

    def module_file(self, name: str) -> Path | None:
        """The source file of vlforge module ``name`` (a package's ``__init__.py``), or None outside vlforge."""
        for prefix, folder in self.roots:
            if name == prefix or name.startswith(prefix + "."):
                base = folder.joinpath(*name[len(prefix):].split(".")[1:])
                if (base / "__init__.py").is_file():
                    return base / "__init__.py"
                if base.with_suffix(".py").is_file() and base != folder:
                    return base.with_suffix(".py")
                return None
        return None

    def relative(self, path: Path) -> str:
        """``path`` as a module-like path (``components/bpe.py``), the same in a checkout and an install."""
        for prefix, folder in self.roots:
            if path.is_relative_to(folder):
                head = prefix.split(".")[1:] or ["vlforge"]
                return "/".join([*head, path.relative_to(folder).as_posix()])
        return path.as_posix()


@functools.cache
def installed_layout() -> Layout:
    """The layout of the vlforge this process imports (a checkout with an editable install, or a wheel)."""
    spec = importlib.util.find_spec("vlforge")
    assert spec is not None and spec.submodule_search_locations
    mapped = {}
    for m in MAPPED:
        sub = importlib.util.find_spec(f"vlforge.{m}")
        if sub is not None and sub.submodule_search_locations:
            mapped[m] = Path(list(sub.submodule_search_locations)[0])
    return Layout.of(Path(list(spec.submodule_search_locations)[0]), mapped)


def _type_checking_only(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


@functools.lru_cache(maxsize=4096)
def _imports(path: str, mtime_ns: int, size: int, module: str, is_package: bool) -> tuple[tuple[str, tuple[str, ...] | None], ...]:
    """``(module, names)`` for each import in the file (``names`` None for a plain ``import``), made absolute.
    Keyed on the file's mtime and size, so an edited file is parsed again."""
    tree = ast.parse(Path(path).read_bytes(), filename=path)
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, tuple[str, ...] | None]] = []

    def visit(nodes: Iterable[ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _type_checking_only(node):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.extend((alias.name, None) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                found.append((base, tuple(alias.name for alias in node.names)))
            visit(ast.iter_child_nodes(node))

    visit(tree.body)
    return tuple((m, n) for m, n in found if m == "vlforge" or m.startswith("vlforge."))


def _stat_key(f: Path) -> tuple[int, int]:
    st = f.stat()
    return st.st_mtime_ns, st.st_size


def _module_imports(name: str, layout: Layout) -> tuple[tuple[str, tuple[str, ...] | None], ...]:
    f = layout.module_file(name)
    if f is None:
        return ()
    return _imports(str(f), *_stat_key(f), name, f.name == "__init__.py")


def _is_package(name: str, layout: Layout) -> bool:
    f = layout.module_file(name)
    return f is not None and f.name == "__init__.py"


def _reexport_source(package: str, attr: str, layout: Layout) -> str | None:
    """The module a package's ``__init__`` imports ``attr`` from, if it re-exports it (``from .x import attr``)."""
    for mod, names in _module_imports(package, layout):
        if names and attr in names and mod != package:
            return mod
    return None


def _excluded(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") or name.startswith(p + "_") for p in NOT_STAGE_CODE)


def import_closure(entries: Iterable[str], layout: Layout | None = None) -> list[Path]:
    """The files of vlforge's modules that importing ``entries`` (module names) runs, sorted."""
    layout = layout or installed_layout()
    followed: set[str] = set()
    files: set[Path] = set()
    todo = list(entries)

    def hash_parents(name: str) -> None:
        parts = name.split(".")
        for i in range(1, len(parts)):
            if (f := layout.module_file(".".join(parts[:i]))) is not None:
                files.add(f)

    while todo:
        name = todo.pop()
        if name in followed or _excluded(name) or (f := layout.module_file(name)) is None:
            continue
        followed.add(name)
        files.add(f)
        hash_parents(name)
        for mod, names in _module_imports(name, layout):
            if names is None or not _is_package(mod, layout):
                todo.append(mod)
                continue
            # from PACKAGE import a, b: each a submodule, a re-export (follow its source), or the package's own
            if (pf := layout.module_file(mod)) is not None and not _excluded(mod):
                files.add(pf)
                hash_parents(mod)
            for attr in names:
                sub = f"{mod}.{attr}"
                if layout.module_file(sub) is not None:
                    todo.append(sub)
                elif (src := _reexport_source(mod, attr, layout)) is not None:
                    todo.append(src)
                else:
                    todo.append(mod)
    return sorted(files)


def family_module(family: str) -> str:
    """The package of a registered family (``components/models/<folder>/``; VL-T5 and VL-BART share one)."""
    from vlforge.components.models.registry import get_family

    module = type(get_family(family)).__module__
    return module.rpartition(".")[0] if module.count(".") > 3 else module


def family_data_files(family: str, layout: Layout | None = None) -> list[Path]:
    init = (layout or installed_layout()).module_file(family_module(family))
    if init is None:
        return []
    return sorted(p for p in init.parent.rglob("*") if p.is_file() and p.suffix in FAMILY_DATA and "__pycache__" not in p.parts)


def code_files(entries: Iterable[str], families: Iterable[str] = (), layout: Layout | None = None) -> list[Path]:
    """The files a stage's cache key fingerprints: the closure of ``entries`` and of each family's package, plus
    that family's recipes."""
    layout = layout or installed_layout()
    fams = sorted(set(families))
    files = set(import_closure([*entries, *map(family_module, fams)], layout))
    for fam in fams:
        files.update(family_data_files(fam, layout))
    return sorted(files)


def code_fingerprint(entries: Iterable[str], families: Iterable[str] = (), layout: Layout | None = None) -> str:
    layout = layout or installed_layout()
    h = hashlib.sha256()
    for f in code_files(entries, families, layout):
        h.update(layout.relative(f).encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def stage_key(stage: str, inputs: dict[str, str], config: dict[str, Any], families: Iterable[str] = (),
              entries: Iterable[str] = ()) -> str:
    """The cache key of ``stage`` (its module ``vlforge.components.stages.<stage>`` is the entry point; ``entries``
    adds modules it loads by name, ``families`` the family packages whose models it builds or loads)."""
    code = code_fingerprint([f"vlforge.components.stages.{stage}", *entries], families)
    payload = {"stage": stage, "inputs": inputs, "config": config, "code": code}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
