"""The base of the families' own image-text ``transformers`` models (UNIMO, VLMo, UniT, unified, CLIP with a
pretrained text tower): ``PreTrainedModel`` with the inputs they all take. A subclass sets its ``config_class``
(explicitly: under ``from __future__ import annotations`` the ``config:`` annotation is a string that
``transformers`` cannot use) and its ``base_model_prefix``.

It imports nothing of vlforge: an ``hf`` export ships it beside the modeling code as remote code
(``convert/remote_code.py``), where vlforge is not installed."""
from __future__ import annotations

from transformers import PreTrainedModel


class ImageTextPreTrainedModel(PreTrainedModel):
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
