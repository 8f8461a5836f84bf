"""Data stages: sources -> URL table -> crawl (img2dataset) -> split webdataset shards + manifest -> loaders."""
