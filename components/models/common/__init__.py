"""What the model families share, written once: the recipe fields and recipe->config arguments most families
declare alike (``config.py``), the one-line checks their ``preflight`` and ``build_model`` make (``preflight.py``),
ViT's patch projection and the weight initialisation of the families built on it (``patch_embed.py``), the
base of the image-text ``PreTrainedModel`` classes (``pretrained.py``) and the per-part initialisation from a
pretrained model (``parts.py``). A family imports what it needs from here; nothing here knows any one family."""
