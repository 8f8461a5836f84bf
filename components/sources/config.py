"""Where a dataset's samples come from, as configuration: one source, or a weighted mix of several."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MixPart(BaseModel):
    """One source of a weighted mix (a URL list, local table or image folder; not builtin)."""

    model_config = ConfigDict(extra="forbid")
    spec: str
    weight: float = Field(1.0, gt=0)
    url_col: str = "url"
    caption_col: str = "caption"
    path_col: str = "path"
    label_col: str | None = None
    key_col: str | None = None


class SourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: str = "builtin:shapes?n=2000"  # "mix" with ``mix`` set: several sources by weight
    name: str | None = None  # dataset name in the catalog; default from the spec
    url_col: str = "url"
    caption_col: str = "caption"
    path_col: str = "path"
    label_col: str | None = None
    key_col: str | None = None
    mix: list[MixPart] = Field(default_factory=list)
    mix_seed: int = 0
    # benchmark layouts (karpathy:, vqav2:, nlvr2:): the image root; None: the layout file's folder
    images: str | None = None
    # zero-shot protocol the dataset carries (imagefolder:): class names one a line in class order, and prompt
    # templates one a line with ``{}``; None: the folder names, and the evaluation's default templates
    classnames: str | None = None
    templates: str | None = None
