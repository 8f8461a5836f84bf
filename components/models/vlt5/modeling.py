"""VL-T5 / VL-BART models: ``transformers``' T5 and BART encoder-decoders whose encoder also reads a visual embedding.

The paper's visual embedding (Cho et al. 2021, section 3.1; ``VisualEmbedding`` in ``j-min/VL-T5``
``modeling_t5.py``) is the sum of four terms per region: a projection of the region's Faster R-CNN RoI feature,
a projection of its box ``(x1, y1, x2, y2, area)``, an image-order embedding and a region-id embedding, the last
shared with the ``<vis_extra_id_k>`` rows of the word-embedding table (so the decoder can name a region by
emitting its token: visual grounding). Here a small ViT over a patch grid stands in for the detector: each patch
is a region, its box the patch's cell in normalised image coordinates. The region tokens sit after the text
vocabulary (ids ``text_vocab + k``); the embedding table, and the tied LM head, have ``text_vocab + regions`` rows.

The visual embeddings follow the text embeddings in the encoder input (``inputs_embeds = cat(text, regions)``), as
in the paper's ``JointEncoder``. Unlike the paper, T5's relative position bias (and BART's learned positions) also
cover the region positions: the project's notes accept that at this scale."""
from __future__ import annotations

import torch
from torch import nn
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
    ViTConfig,
)
from transformers import initialization as init
from transformers.models.t5.modeling_t5 import T5LayerNorm
from transformers.models.vit.modeling_vit import ViTEmbeddings, ViTLayer

N_IMAGES = 2  # image-order embeddings, as the paper's n_images (NLVR2 pairs); one image per sample here


def patch_boxes(grid: int, device: torch.device | None = None) -> torch.Tensor:
    """The (grid², 4) boxes ``x1, y1, x2, y2`` (normalised to [0, 1]) of a ``grid`` x ``grid`` patch grid, in the
    ViT's row-major patch order: region ``k`` is row ``k // grid``, column ``k % grid``."""
    k = torch.arange(grid * grid, device=device)
    row, col = (k // grid).float(), (k % grid).float()
    return torch.stack([col / grid, row / grid, (col + 1) / grid, (row + 1) / grid], dim=-1)


def region_of_point(x: float, y: float, grid: int) -> int:
    """The patch (region index) holding the normalised point ``(x, y)``."""
    col = min(max(int(x * grid), 0), grid - 1)
    row = min(max(int(y * grid), 0), grid - 1)
    return row * grid + col


def _mark_visual(module: nn.Module) -> None:
    """Tag every sub-module so the backbone's ``_init_weights`` leaves them to ``init_visual_module`` (T5's generic
    init would draw Linear weights with std 1.0, its ``initializer_factor``)."""
    for m in module.modules():
        m._vl_visual = True


@torch.no_grad()
def init_visual_module(module: nn.Module, std: float) -> None:
    """ViT-style initialisation of one visual sub-module (``transformers.initialization`` skips loaded weights)."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        init.normal_(module.weight, std=std)
    elif isinstance(module, (nn.LayerNorm, T5LayerNorm)):
        init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            init.zeros_(module.bias)
    elif isinstance(module, ViTEmbeddings):
        init.trunc_normal_(module.cls_token, std=std)
        init.trunc_normal_(module.position_embeddings, std=std)


class PatchRegionEncoder(nn.Module):
    """A small ViT (``ViTEmbeddings`` + ``ViTLayer`` blocks + LayerNorm): one feature per patch, the stand-in for
    the paper's Faster R-CNN region features. The [CLS] token takes part in attention; its output is dropped."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.embeddings = ViTEmbeddings(config)
        self.layers = nn.ModuleList([ViTLayer(config) for _ in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.embeddings(pixel_values.to(self.embeddings.patch_embeddings.projection.weight.dtype))
        for layer in self.layers:
            hidden = layer(hidden)
        return self.layernorm(hidden)[:, 1:]


def region_encoder_state(vit_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``ViTModel``'s weights (an image-teacher's ``vit``) for ``PatchRegionEncoder``, which has the same names
    (``embeddings``, ``layers.i``, ``layernorm``); the MIM mask token, which region features never use, is left out."""
    return {k: v for k, v in vit_state.items() if k != "embeddings.mask_token"}


class VisualEmbedding(nn.Module):
    """The paper's visual embedding over the patch regions:
    ``norm(W_f feat) + norm(W_b [x1, y1, x2, y2, area]) + E_img[0] + E_tok[<vis_extra_id_k>]``."""

    def __init__(self, config, norm: type[nn.Module]):
        super().__init__()
        d = config.d_model
        self.grid = config.vl_image_size // config.vl_patch_size
        self.image_encoder = PatchRegionEncoder(vision_config(config))
        self.feat_embedding = nn.Sequential(nn.Linear(config.vl_vision_width, d), norm(d))
        self.box_embedding = nn.Sequential(nn.Linear(5, d), norm(d))  # the paper's absolute_vis_pos_embedding
        self.img_order_embedding = nn.Embedding(N_IMAGES, d)
        _mark_visual(self)

    def boxes(self, device: torch.device | None = None) -> torch.Tensor:
        """(regions, 5): each patch's box and area, the box embedding's input."""
        box = patch_boxes(self.grid, device)
        area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
        return torch.cat([box, area[:, None]], dim=-1)

    def forward(self, pixel_values: torch.Tensor, region_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, regions, d_model). ``region_embeddings`` (regions, d_model): the region tokens' word embeddings."""
        feats = self.image_encoder(pixel_values)
        box = self.boxes(feats.device).to(feats.dtype)
        img_order = self.img_order_embedding(torch.zeros(1, dtype=torch.long, device=feats.device))
        return self.feat_embedding(feats) + self.box_embedding(box)[None] + img_order[None] + region_embeddings[None]


def vision_config(config) -> ViTConfig:
    return ViTConfig(
        hidden_size=config.vl_vision_width,
        num_hidden_layers=config.vl_vision_layers,
        num_attention_heads=config.vl_vision_heads,
        intermediate_size=getattr(config, "vl_vision_intermediate", None) or config.vl_vision_width * 4,
        layer_norm_eps=getattr(config, "vl_vision_layer_norm_eps", None) or 1e-12,
        image_size=config.vl_image_size,
        patch_size=config.vl_patch_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa",  # the blocks are used outside a ViTModel, which would otherwise set it
    )


class _VisualSeq2SeqMixin:
    """What VL-T5 and VL-BART add to their backbone: the visual embedding, and a forward that takes images."""

    config: T5Config | BartConfig

    @property
    def num_regions(self) -> int:
        return self.visual_embedding.grid ** 2

    @property
    def text_vocab_size(self) -> int:
        return int(self.config.vl_text_vocab_size)

    def region_token_ids(self, device: torch.device | None = None) -> torch.Tensor:
        """The ids of ``<vis_extra_id_0..regions-1>``: the rows after the text vocabulary."""
        return torch.arange(self.num_regions, device=device) + self.text_vocab_size

    def embed_inputs(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder input: text token embeddings then the regions' visual embeddings, and the joint mask."""
        embed = self.get_input_embeddings()  # BART's scaled embedding applies its scale here too
        text = embed(input_ids)
        vis = self.visual_embedding(pixel_values, embed(self.region_token_ids(input_ids.device)))
        mask = torch.cat([attention_mask, attention_mask.new_ones(vis.shape[:2])], dim=1)
        return torch.cat([text, vis.to(text.dtype)], dim=1), mask

    def forward(self, pixel_values: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, **kwargs):
        """The backbone's forward; with ``pixel_values`` (training) the encoder reads text + regions."""
        if pixel_values is not None and kwargs.get("encoder_outputs") is None:
            kwargs["inputs_embeds"], attention_mask = self.embed_inputs(pixel_values, input_ids, attention_mask)
            input_ids = None
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        if getattr(module, "_vl_visual", False):
            init_visual_module(module, self.config.vl_initializer_range)
        else:
            super()._init_weights(module)


class VLT5ForConditionalGeneration(_VisualSeq2SeqMixin, T5ForConditionalGeneration):
    """VL-T5: ``T5ForConditionalGeneration`` whose encoder reads text + the visual embedding."""

    def __init__(self, config: T5Config):
        super().__init__(config)
        self.visual_embedding = VisualEmbedding(config, lambda d: T5LayerNorm(d, eps=config.layer_norm_epsilon))
        self.post_init()  # initialises the new visual modules (the backbone's are already marked initialised)


class VLBartForConditionalGeneration(_VisualSeq2SeqMixin, BartForConditionalGeneration):
    """VL-BART: ``BartForConditionalGeneration`` whose encoder reads text + the visual embedding."""

    def __init__(self, config: BartConfig):
        super().__init__(config)
        self.visual_embedding = VisualEmbedding(config, nn.LayerNorm)
        self.post_init()
