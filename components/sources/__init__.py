"""Data sources: the built-in synthetic ``builtin:shapes`` generator (``shapes``), readers for user tables
(``tables``: URL lists and tables of local image paths), and the ``LAYOUT:PATH`` sources (``layouts``):
benchmark layouts (``karpathy``, ``imagefolder``, ``vqav2``, ``nlvr2``, ``glue``) and images held in archives
(``wds``, ``parquet_images``). Each ends as image-text rows the crawl consumes (GLUE: text rows, no crawl)."""
