"""Model families, one folder each, and the registry."""
