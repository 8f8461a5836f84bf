"""The artifact catalog: content-addressed, immutable entries with lineage.

Every pipeline stage registers its outputs here (see :mod:`vlforge.catalog.store`)."""
from vlforge.catalog.store import (
    Artifact,
    Catalog,
    FileEntry,
    detect_code_version,
    packages_snapshot,
)

__all__ = ["Artifact", "Catalog", "FileEntry", "detect_code_version", "packages_snapshot"]
