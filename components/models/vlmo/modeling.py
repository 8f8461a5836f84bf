"""The VLMo multiway transformer ("mixture-of-modality-experts"), after ``microsoft/unilm``'s
``vlmo/modules/multiway_transformer.py`` and ``objectives.py``.

Every block has one shared self-attention and modality experts: a vision FFN (V-FFN) and a language FFN (L-FFN)
in every layer, and a vision-language FFN (VL-FFN) only in layers ``>= vlffn_start_layer`` (10 of 12 in Base).
Pre-LayerNorm blocks with layer scale (BEiT's ``gamma``), one shared final LayerNorm. Text enters through BERT-style
embeddings, images through a ViT patch projection with [CLS] and learned positions; each gets a modality-type
embedding. Three ways through the same weights:
- image only (``encode_image``): V-FFN in every layer;  text only (``encode_text``): L-FFN in every layer;
- fusion (``fuse``, text tokens then image tokens): below ``vlffn_start_layer`` text tokens take the L-FFN and image
  tokens the V-FFN; from there on every token takes the VL-FFN.
The dual-encoder features for ITC are the projected [CLS] of the final layer, and a second set taken by running the
unimodal hidden states of layer ``vlffn_start_layer - 1`` through the top layers with the VL-FFN (VLMo's
``cls_vlffn_feats``); the ITC loss averages both.

``VlmoModel.forward`` is the whole pretraining objective of one stage (so a data-parallel wrapper sees exactly one
forward per step) and returns the losses:
- stage 1, image only: masked image modelling by pixel regression on masked patches (replacing BEiT's DALL-E
  tokens, as the project's notes allow); masked patches are replaced by a learned mask embedding;
- stage 2, text only: MLM through the text path;
- stage 3, image-text: ITC (symmetric InfoNCE, gathered across workers) + ITM with one hard negative per image and
  per text sampled ∝ softmax of the ITC similarities (``heads.sample_negatives``, positive excluded), CE over the
  3B pairs + MLM through the fusion path. Unlike the released code, which draws ITM negatives from the batch gathered
  across GPUs, each worker draws them from its own part of the batch (the fusion pass stays local)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from vlforge.components.losses import gather_with_grad, info_nce, itm_loss, mlm_loss
from vlforge.components.models.common.patch_embed import PatchEmbedding, init_vit_weights
from vlforge.components.models.common.pretrained import ImageTextPreTrainedModel
from vlforge.components.models.heads import ITMHead, TiedLMHead, sample_negatives
from vlforge.components.models.masking import masked_patch_loss, patchify

MODEL_TYPE = "vlforge_vlmo"


class VlmoConfig(PreTrainedConfig):
    model_type = MODEL_TYPE
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: int = 4
    vlffn_start_layer: int = 10
    image_size: int = 224
    patch_size: int = 16
    max_text_positions: int = 40
    layer_norm_eps: float = 1e-12
    layer_scale_init: float = 0.1
    initializer_range: float = 0.02
    logit_scale_init: float = math.log(1 / 0.07)
    tie_word_embeddings: bool = True


class TextEmbeddings(nn.Module):
    """BERT embeddings (word + position + token type, LayerNorm), as VLMo's ``BertEmbeddings``."""

    def __init__(self, config: VlmoConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_text_positions, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(2, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None] + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class ImageEmbeddings(PatchEmbedding):
    """ViT patch projection + [CLS] + learned positions; masked patches (stage 1) become a learned mask embedding."""

    def __init__(self, config: VlmoConfig):
        super().__init__(config.hidden_size, config.image_size, config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, config.hidden_size))

    def learned_tokens(self) -> tuple[nn.Parameter, ...]:
        return self.cls_token, self.mask_token, self.pos_embed

    def forward(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patches(pixel_values, patch_mask)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        bsz, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(bsz, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(bsz, length, dim))


class MultiwayBlock(GradientCheckpointingLayer):  # grad_checkpointing: common/checkpointing.py
    """Shared attention; V-FFN and L-FFN experts, plus a VL-FFN when ``with_vlffn`` (the top layers)."""

    def __init__(self, config: VlmoConfig, with_vlffn: bool):
        super().__init__()
        dim, eps = config.hidden_size, config.layer_norm_eps
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, config.num_attention_heads)
        self.norm2_text, self.mlp_text = nn.LayerNorm(dim, eps=eps), Mlp(dim, dim * config.mlp_ratio)
        self.norm2_imag, self.mlp_imag = nn.LayerNorm(dim, eps=eps), Mlp(dim, dim * config.mlp_ratio)
        self.with_vlffn = with_vlffn
        if with_vlffn:
            self.norm2_vl, self.mlp_vl = nn.LayerNorm(dim, eps=eps), Mlp(dim, dim * config.mlp_ratio)
        self.gamma_1 = nn.Parameter(torch.full((dim,), config.layer_scale_init))
        self.gamma_2 = nn.Parameter(torch.full((dim,), config.layer_scale_init))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None, modality: str, text_len: int = 0) -> torch.Tensor:
        x = x + self.gamma_1 * self.attn(self.norm1(x), key_mask)
        if modality == "text":
            ffn = self.mlp_text(self.norm2_text(x))
        elif modality == "image":
            ffn = self.mlp_imag(self.norm2_imag(x))
        elif modality == "vl" and self.with_vlffn:
            ffn = self.mlp_vl(self.norm2_vl(x))
        elif modality == "vl":  # lower layers of the fusion encoder: each token takes its own modality's expert
            txt, img = x[:, :text_len], x[:, text_len:]
            ffn = torch.cat([self.mlp_text(self.norm2_text(txt)), self.mlp_imag(self.norm2_imag(img))], dim=1)
        else:
            raise ValueError(f"unknown modality '{modality}'")
        return x + self.gamma_2 * ffn


class Pooler(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class VlmoModel(ImageTextPreTrainedModel):
    config: VlmoConfig
    config_class = VlmoConfig
    base_model_prefix = "vlmo"
    _tied_weights_keys = {"mlm_head.decoder.weight": "text_embeddings.word_embeddings.weight"}  # noqa: RUF012 (transformers reads this class attribute)

    def __init__(self, config: VlmoConfig):
        super().__init__(config)
        dim = config.hidden_size
        self.text_embeddings = TextEmbeddings(config)
        self.image_embeddings = ImageEmbeddings(config)
        self.modality_type = nn.Embedding(2, dim)  # 0 text, 1 image
        self.blocks = nn.ModuleList(
            MultiwayBlock(config, with_vlffn=i >= config.vlffn_start_layer) for i in range(config.num_hidden_layers)
        )
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.pooler = Pooler(dim)
        self.itm_head = ITMHead(dim)
        self.mlm_head = TiedLMHead(config.hidden_size, config.vocab_size, config.layer_norm_eps)
        self.mim_head = nn.Linear(dim, config.patch_size**2 * 3)
        self.itc_text_proj = nn.Linear(dim, dim, bias=False)
        self.itc_image_proj = nn.Linear(dim, dim, bias=False)
        self.itc_vl_text_proj = nn.Linear(dim, dim, bias=False)
        self.itc_vl_image_proj = nn.Linear(dim, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self.logit_vl_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if init_vit_weights(module, self.config.initializer_range):
            return
        if isinstance(module, MultiwayBlock):
            init.constant_(module.gamma_1, self.config.layer_scale_init)
            init.constant_(module.gamma_2, self.config.layer_scale_init)
        elif module is self:
            init.constant_(module.logit_scale, float(self.config.logit_scale_init))
            init.constant_(module.logit_vl_scale, float(self.config.logit_scale_init))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_embeddings.word_embeddings

    def get_output_embeddings(self) -> nn.Linear:
        return self.mlm_head.decoder

    # ---- the three paths -------------------------------------------------------------------------------
    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_embeddings(input_ids) + self.modality_type.weight[0]

    def embed_image(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.image_embeddings(pixel_values, patch_mask) + self.modality_type.weight[1]

    def _unimodal(self, x: torch.Tensor, key_mask: torch.Tensor | None, modality: str, with_vl: bool):
        """Final normed hidden states through the modality expert, and optionally VLMo's VL-FFN [CLS] branch."""
        start = self.config.vlffn_start_layer
        vl = None
        for i, block in enumerate(self.blocks):
            if i == start and with_vl:
                vl = x
            x = block(x, key_mask, modality)
        if with_vl and vl is not None:
            for block in self.blocks[start:]:
                vl = block(vl, key_mask, "vl")
            vl = self.norm(vl)
        return self.norm(x), vl

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, with_vl: bool = False):
        return self._unimodal(self.embed_text(input_ids), attention_mask, "text", with_vl)

    def encode_image(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor | None = None, with_vl: bool = False):
        return self._unimodal(self.embed_image(pixel_values, patch_mask), None, "image", with_vl)

    def fuse(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """The fusion encoder's normed hidden states, text tokens first."""
        text, image = self.embed_text(input_ids), self.embed_image(pixel_values)
        x = torch.cat([text, image], dim=1)
        key_mask = torch.cat([attention_mask, torch.ones(image.shape[:2], dtype=attention_mask.dtype, device=x.device)], dim=1)
        for block in self.blocks:
            x = block(x, key_mask, "vl", text_len=text.shape[1])
        return self.norm(x)

    def itc_features(self, text_cls: torch.Tensor, image_cls: torch.Tensor, vl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        tp, ip = (self.itc_vl_text_proj, self.itc_vl_image_proj) if vl else (self.itc_text_proj, self.itc_image_proj)
        return F.normalize(tp(text_cls), dim=-1), F.normalize(ip(image_cls), dim=-1)

    def itm_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.itm_head(self.pooler(self.fuse(input_ids, attention_mask, pixel_values)))

    # ---- pretraining objectives --------------------------------------------------------------------------
    def forward(
        self,
        stage: int,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mlm_input_ids: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        patch_mask: torch.Tensor | None = None,
        itm_forbid: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        gather: bool = True,
        hard_negatives: bool = True,
    ) -> dict[str, torch.Tensor]:
        """The unweighted losses of one pretraining stage (see the module docstring); the family weights and sums them."""
        if stage == 1:
            hidden, _ = self.encode_image(pixel_values, patch_mask)
            pred = self.mim_head(hidden[:, 1:])
            return {"mim": masked_patch_loss(pred, patchify(pixel_values, self.config.patch_size), patch_mask)}
        if stage == 2:
            hidden, _ = self.encode_text(mlm_input_ids, attention_mask)
            return {"mlm": mlm_loss(self.mlm_head(hidden), mlm_labels)}
        # stage 3: ITC on the dual-encoder features (final layer and VL-FFN branch, averaged)
        text_h, text_vl = self.encode_text(input_ids, attention_mask, with_vl=True)
        image_h, image_vl = self.encode_image(pixel_values, with_vl=True)
        txt, img = self.itc_features(text_h[:, 0], image_h[:, 0])
        txt_vl, img_vl = self.itc_features(text_vl[:, 0], image_vl[:, 0], vl=True)
        local_sim = (txt @ img.t()).detach()
        if gather:
            txt, img, txt_vl, img_vl = (gather_with_grad(t) for t in (txt, img, txt_vl, img_vl))
        itc = 0.5 * (info_nce(img, txt, self.logit_scale.exp()) + info_nce(img_vl, txt_vl, self.logit_vl_scale.exp()))
        # ITM: one hard negative image per text and one hard negative text per image, ∝ softmax(ITC sim)
        bsz = input_ids.shape[0]
        # (or uniformly, ``hard_negatives=False``: the from-scratch curriculum's first steps, see the recipe)
        mode = "hard" if hard_negatives else "random"
        scale = self.logit_scale.exp().detach()
        neg_image = sample_negatives(local_sim * scale, mode, itm_forbid, generator)
        neg_text = sample_negatives(local_sim.t() * scale, mode, itm_forbid, generator)
        ok_i, ok_t = neg_image >= 0, neg_text >= 0
        ids = torch.cat([mlm_input_ids, input_ids, input_ids[ok_i], input_ids[neg_text[ok_t]]])
        masks = torch.cat([attention_mask, attention_mask, attention_mask[ok_i], attention_mask[neg_text[ok_t]]])
        pixels = torch.cat([pixel_values, pixel_values, pixel_values[neg_image[ok_i]], pixel_values[ok_t]])
        # one fusion pass: the masked captions with their images (MLM), then the 3B ITM pairs
        fused = self.fuse(ids, masks, pixels)
        mlm = mlm_loss(self.mlm_head(fused[:bsz, : input_ids.shape[1]]), mlm_labels)
        itm_logits = self.itm_head(self.pooler(fused[bsz:]))
        labels = torch.cat([torch.ones(bsz), torch.zeros(int(ok_i.sum()) + int(ok_t.sum()))]).long().to(itm_logits.device)
        itm = itm_loss(itm_logits, labels)
        acc = (itm_logits.argmax(dim=-1) == labels).float().mean()
        return {"itc": itc, "itm": itm, "mlm": mlm, "itm_accuracy": acc.detach()}


# Known to the Auto classes, so tools that read a checkpoint's config.json (e.g. a tokenizer loaded from the same
# directory) recognise the model type once this module is imported.
AutoConfig.register(MODEL_TYPE, VlmoConfig, exist_ok=True)
AutoModel.register(VlmoConfig, VlmoModel, exist_ok=True)
