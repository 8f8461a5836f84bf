"""A family's own ``transformers`` model as remote code: the files and the ``auto_map`` an export needs so that
``AutoConfig`` / ``AutoModel.from_pretrained(DIR, trust_remote_code=True)`` load it where vlforge is not installed.

The families that define their own ``PreTrainedConfig`` and ``PreTrainedModel`` (UNIMO, VLMo, UniT, the unified
model, CLIP with a pretrained text tower) register them with the ``Auto`` classes under a ``vlforge_*`` model type.
transformers loads remote code from flat files beside the weights, importing one another relatively
(``from .name import X``), and refuses a file that imports a package the user lacks. So the export copies the
module that defines the config class and every vlforge module it imports, transitively (the model's building
blocks: losses, heads, patch embedding...), each as one flat file whose ``vlforge`` imports become relative ones,
and names the two classes in ``config.json``'s ``auto_map``. Nothing else changes: the weights are the ones
vlforge saved, so the loaded model is the same network. A module whose imports reach beyond what a model needs
(the registry, the data layer: anything importing ``pydantic``, ``webdataset``...) is not exportable this way and
says so, rather than writing code that would fail on the user's machine."""
from __future__ import annotations

import ast
import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from vlforge.errors import UserError

# modules remote code may import besides vlforge's own and the standard library: what loading a transformers
# model needs anyway
ALLOWED_TOP_LEVEL = frozenset({"torch", "transformers", "numpy", "safetensors", "scipy"})
_FROM_VLFORGE = re.compile(r"^(\s*from\s+)(vlforge(?:\.\w+)+)(\s+import\b)")


@dataclass(frozen=True)
class RemoteCode:
    """The flat files (name -> source) and the ``auto_map`` of one model type."""

    files: dict[str, str]
    auto_map: dict[str, str]


def _module_file(name: str) -> Path | None:
    from vlforge.components.stages.keys import installed_layout

    path = installed_layout().module_file(name)
    return None if path is None or path.name == "__init__.py" else path


def _vlforge_imports(tree: ast.AST, where: str) -> list[tuple[int, str]]:
    """(line, module) of every ``from vlforge.x import ...`` anywhere in the file (function bodies included:
    transformers checks those too); other forms of importing vlforge cannot be made relative."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "vlforge":
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "vlforge" for a in node.names):
            raise UserError(f"{where} imports vlforge with 'import', which remote code cannot rewrite")
    return found


def _third_party(tree: ast.AST) -> set[str]:
    import sys

    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n != "vlforge" and n != "__future__" and n not in sys.stdlib_module_names}


def _flat_name(module: str, taken: set[str]) -> str:
    parts = module.split(".")
    for i in range(1, len(parts)):
        name = "_".join(parts[-i:])
        if name not in taken:
            return name
    return "_".join(parts)


def remote_code(model_type: str, architecture: str | None = None) -> RemoteCode:
    """The remote code of the vlforge model type ``model_type`` (its config class's module and what that imports);
    ``AutoModel`` maps to ``architecture`` (a class of that module: what ``config.json``'s ``architectures`` names)
    or else to the class registered for the config. UserError when transformers ships the type itself or vlforge
    defines no such type."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        config_cls = CONFIG_MAPPING[model_type]
    except KeyError:
        raise UserError(f"model type '{model_type}' is unknown to transformers and to vlforge") from None
    if not config_cls.__module__.startswith("vlforge."):
        raise UserError(f"model type '{model_type}' ships with transformers; it needs no remote code")
    model_cls = MODEL_MAPPING[config_cls]
    if architecture and architecture != model_cls.__name__:
        model_cls = getattr(importlib.import_module(config_cls.__module__), architecture, model_cls)
    entry = config_cls.__module__
    names: dict[str, str] = {entry: f"modeling_{model_type}"}
    sources: dict[str, str] = {}
    todo = [entry]
    while todo:
        module = todo.pop()
        path = _module_file(module)
        if path is None:
            raise UserError(f"remote code for '{model_type}': '{module}' is a package, not a module; import from "
                            "its module")
        text = path.read_text()
        tree = ast.parse(text)
        extra = _third_party(tree) - ALLOWED_TOP_LEVEL
        if extra:
            raise UserError(f"remote code for '{model_type}': {module} imports {', '.join(sorted(extra))}, which a "
                            "transformers user may lack; keep the model's modules to torch and transformers")
        imported = _vlforge_imports(tree, module)
        for _, dep in imported:
            if dep not in names:
                names[dep] = _flat_name(dep, set(names.values()))
                todo.append(dep)
        lines = text.splitlines(keepends=True)
        for lineno, dep in imported:
            lines[lineno - 1] = _FROM_VLFORGE.sub(lambda m, d=dep: f"{m.group(1)}.{names[d]}{m.group(3)}",
                                                  lines[lineno - 1], count=1)
        sources[module] = "".join(lines)
    files = {f"{names[m]}.py": src for m, src in sources.items()}
    auto_map = {"AutoConfig": f"{names[entry]}.{config_cls.__name__}",
                "AutoModel": f"{names[model_cls.__module__]}.{model_cls.__name__}"}
    return RemoteCode(files, auto_map)


def write_remote_code(model_dir: Path, out_dir: Path) -> bool:
    """Write into ``out_dir`` (an export of ``model_dir``) the remote code of its model type and the ``auto_map`` in
    its ``config.json``; False, writing nothing, when the type ships with transformers (or there is no config)."""
    config_file = Path(out_dir) / "config.json"
    if not config_file.is_file():
        return False
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type", "")
    if not model_type.startswith("vlforge_"):
        return False
    from vlforge.components.models.registry import read_family_file

    read_family_file(Path(model_dir))  # imports the family, which registers its model type
    code = remote_code(model_type, (config.get("architectures") or [None])[0])
    for name, text in code.files.items():
        (Path(out_dir) / name).write_text(text)
    config["auto_map"] = code.auto_map
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return True
