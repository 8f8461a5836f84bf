"""Checkpoint layouts vlforge reads and writes besides its own: open_clip <-> Hugging Face CLIP state dicts
(``open_clip``), and a model's preprocessing as a transformers image-processor config (``hf_processor``). Pure
functions over state dicts and config dicts; the import stage (``components/stages/imports.py``) and
``vlforge catalog export`` (``catalog/export.py``) do the file work."""
