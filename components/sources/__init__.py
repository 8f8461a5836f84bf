"""Data sources: the built-in synthetic ``builtin:shapes`` generator (``shapes``) and readers for user tables
(``tables``: URL lists and tables of local image paths). Each ends as image-text rows the crawl consumes."""
