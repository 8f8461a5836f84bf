"""ImageNet-style class folders (``DIR/<class>/*.jpg``, torchvision's ``ImageFolder`` layout) as a labelled
source for zero-shot classification and the linear probe.

    vlforge run ingest --source imagefolder:imagenet-val/ [--classnames FILE] [--templates FILE]

Classes are the subfolders in sorted order (class i is the i-th folder, as ``ImageFolder`` numbers them); a
class's name is its folder's name with ``_`` as spaces, or line i of ``--classnames`` (for folders named by id,
like ImageNet's ``n01440764``). When every subfolder is a split (``train``, ``val``/``validation``, ``test``),
each holds class folders and the samples keep that split. A sample's caption is its class name, its label the
class name; the class names in order and the prompt templates (``--templates``, one a line with ``{}``) go into
the manifest, where zero-shot classification reads them (CLIP_benchmark's per-dataset classnames/templates)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from vlforge.components.sources.class_prompts import check_class_count, read_classnames, read_templates
from vlforge.components.sources.tables import IMAGE_SUFFIXES, SourceRows, local_image_rows

from vlforge.errors import UserError

SPLIT_FOLDERS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_folders(folder: Path, where: str) -> list[Path]:
    classes = _subfolders(folder)
    if not classes:
        raise UserError(f"imagefolder '{where}' has no class subfolders (expected one folder of images per class)")
    return classes


def load_class_folders(root: Path, classnames: Path | None = None, templates: Path | None = None) -> SourceRows:
    """The rows of a class-folder tree, labelled by class name; see the module docstring for the layout."""
    if not root.is_dir():
        raise UserError(f"imagefolder '{root}' does not exist or is not a folder")
    top = _class_folders(root, str(root))
    if all(p.name in SPLIT_FOLDERS for p in top):
        parts = [(SPLIT_FOLDERS[p.name], p) for p in top]
        folder_names = sorted({c.name for _, p in parts for c in _class_folders(p, str(p))})
    else:
        parts = [(None, root)]
        folder_names = [p.name for p in top]
    names = read_classnames(classnames) if classnames else [n.replace("_", " ") for n in folder_names]
    check_class_count(classnames, names, len(folder_names), f"imagefolder '{root}'", "class folders")
    name_of = dict(zip(folder_names, names))
    images, labels, keys, extras = [], [], [], []
    for split, folder in parts:
        for class_dir in _subfolders(folder):
            found = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"imagefolder class folder '{class_dir}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
            for image in found:
                images.append(image)
                labels.append(name_of[class_dir.name])
                keys.append(image.relative_to(root).as_posix())
                extras.append({"split": split, "class_folder": class_dir.name} if split else {"class_folder": class_dir.name})
    description = {"kind": "imagefolder", "path": str(root), "classes": len(names), "classnames": names}
    if templates:
        description["templates"] = read_templates(templates)
    salt = hashlib.sha256(repr((names, description.get("templates"))).encode()).hexdigest()
    return local_image_rows(images, list(labels), keys, description, labels=labels, extras=extras, salt=salt)
