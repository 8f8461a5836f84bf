"""The artifact catalog: content-addressed, immutable entries with lineage.

Every pipeline stage registers its outputs here (see :mod:`vlforge.catalog.store`); :mod:`.remote` keeps the blobs
on shared storage (S3 or any fsspec URL) too, :mod:`.maintenance` checks and cleans the store, :mod:`.export`
writes a model out as a plain Hugging Face folder, :mod:`.web` serves a read-only browser."""
from vlforge.catalog.store import (
    Artifact,
    Catalog,
    FileEntry,
    Query,
    detect_code_version,
    packages_snapshot,
)

__all__ = ["Artifact", "Catalog", "FileEntry", "Query", "detect_code_version", "packages_snapshot"]
