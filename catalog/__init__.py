"""The artifact catalog: content-addressed, immutable entries with lineage."""
