"""The UNIMO unified-modal transformer: one ``transformers`` ``BertEncoder`` over image tokens, text tokens or both.

Inputs (Li et al., 2021, with ViT patches in place of Faster R-CNN regions):
- text: ``BertEmbeddings`` (word + position + token type 0, LayerNorm); the first token (the tokenizer's <bos>)
  plays UNIMO's [CLS];
- image: an [IMG] token followed by the linearly projected patches (a ViT ``Conv2d``), learned positions and token
  type 1, LayerNorm; masked patches (masked image modelling) are replaced by a learned mask embedding.
A sequence is ``[IMG, patches ; text]`` with either part absent. The 3-D attention mask
(``models.attention.seq2seq_attention_mask``) makes the same weights a bidirectional encoder or a
sequence-to-sequence model (source bidirectional, target causal): UNIMO's UniLM-style modes.

Heads: a BERT-style LM head whose decoder is tied to the word embeddings, shared by MLM and seq2seq generation (as
UNIMO shares its output layer); a linear pixel-regression head for masked patches; a learnable contrastive
temperature (CLIP's ``logit_scale``). The [IMG] and [CLS] final states, L2-normalised, are the image and text
representations of the cross-modal contrastive loss and of retrieval. With ``related_memory_size``, buffers hold
the memory of earlier batches' features that related samples are retrieved from (``memory.RelatedMemory``).

``UnimoModel.forward`` computes every loss of one step from tensors the family prepared (one forward per step, as a
data-parallel wrapper wants); see ``family.py`` for what goes in."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, BertConfig
from transformers import initialization as init
from transformers.models.bert.modeling_bert import BertEmbeddings, BertEncoder
from vlforge.components.losses import gather_ragged_with_grad, info_nce, lm_loss, mlm_loss
from vlforge.components.models.attention import (
    seq2seq_attention_mask,
    to_attention_bias,
)
from vlforge.components.models.common.patch_embed import PatchEmbedding, init_vit_weights
from vlforge.components.models.common.pretrained import ImageTextPreTrainedModel
from vlforge.components.models.heads import TiedLMHead
from vlforge.components.models.masking import masked_patch_loss, patchify
from vlforge.components.models.unimo.memory import RelatedMemory, add_related

MODEL_TYPE = "vlforge_unimo"


class UnimoConfig(BertConfig):
    """A ``BertConfig`` (the shared encoder, RoBERTa-base sized in UNIMO-base) plus the image input."""

    model_type = MODEL_TYPE
    image_size: int = 224
    patch_size: int = 16
    logit_scale_init: float = math.log(1 / 0.07)
    related_memory_size: int = 0  # rows of each related-sample memory queue (``memory.RelatedMemory``); 0: none


class ImageEmbeddings(PatchEmbedding):
    """[IMG] + ViT patch projection, learned positions, token type 1, LayerNorm (text's embedding recipe)."""

    def __init__(self, config: UnimoConfig):
        super().__init__(config.hidden_size, config.image_size, config.patch_size)
        self.img_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.num_patches + 1, config.hidden_size))
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def learned_tokens(self) -> tuple[nn.Parameter, ...]:
        return self.img_token, self.mask_token, self.position_embeddings

    def forward(self, pixel_values: torch.Tensor, type_embedding: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patches(pixel_values, patch_mask)
        x = torch.cat([self.img_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return self.dropout(self.LayerNorm(x + self.position_embeddings + type_embedding))


class UnimoModel(ImageTextPreTrainedModel):
    config: UnimoConfig
    config_class = UnimoConfig
    base_model_prefix = "unimo"
    _supports_sdpa = True
    _tied_weights_keys = {"lm_head.decoder.weight": "embeddings.word_embeddings.weight"}  # noqa: RUF012 (transformers reads this class attribute)

    def __init__(self, config: UnimoConfig):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.image_embeddings = ImageEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.lm_head = TiedLMHead(config.hidden_size, config.vocab_size, config.layer_norm_eps)
        self.mim_head = nn.Linear(config.hidden_size, config.patch_size**2 * 3)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        size = getattr(config, "related_memory_size", 0)
        self.related_memory = RelatedMemory(size, config.hidden_size) if size else None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if not init_vit_weights(module, self.config.initializer_range) and isinstance(module, BertEmbeddings):
            # non-persistent buffers, rebuilt after a meta-device build
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)
        if module is self:
            init.constant_(module.logit_scale, float(self.config.logit_scale_init))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    # ---- embeddings and the one encoder ------------------------------------------------------------------
    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))

    def embed_image(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.image_embeddings(pixel_values, self.embeddings.token_type_embeddings.weight[1], patch_mask)

    def encode(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        text_valid: torch.Tensor | None = None,
        source_len: torch.Tensor | None = None,
        patch_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states of ``[IMG, patches ; text]`` (either part may be absent) under the seq2seq mask
        with ``source_len`` text tokens in the source (None: bidirectional)."""
        parts, image_valid = [], None
        if pixel_values is not None:
            parts.append(self.embed_image(pixel_values, patch_mask))
            image_valid = torch.ones(parts[-1].shape[:2], dtype=torch.bool, device=parts[-1].device)
        if input_ids is not None:
            parts.append(self.embed_text(input_ids))
            text_valid = torch.ones_like(input_ids, dtype=torch.bool) if text_valid is None else text_valid.bool()
        else:
            text_valid = None
        x = torch.cat(parts, dim=1)
        mask = seq2seq_attention_mask(image_valid, text_valid, source_len)
        bias = to_attention_bias(mask, self.config._attn_implementation, x.dtype)
        return self.encoder(x, attention_mask=bias).last_hidden_state

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The image alone through the transformer: its L2-normalised [IMG] state."""
        return F.normalize(self.encode(pixel_values=pixel_values)[:, 0].float(), dim=-1)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The text alone through the transformer: its L2-normalised [CLS] (first-token) state."""
        return F.normalize(self.encode(input_ids=input_ids, text_valid=attention_mask)[:, 0].float(), dim=-1)

    # ---- the pretraining objectives ---------------------------------------------------------------------
    def forward(
        self,
        image_pixels: torch.Tensor,
        image_patch_mask: torch.Tensor,
        image_is_cmcl: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
        text_is_cmcl: torch.Tensor,
        text_mlm_labels: torch.Tensor,
        cmcl_pos: torch.Tensor,
        joint_pixels: torch.Tensor,
        joint_ids: torch.Tensor,
        joint_mask: torch.Tensor,
        joint_source_len: torch.Tensor,
        joint_mlm_labels: torch.Tensor,
        joint_lm_labels: torch.Tensor,
        joint_task: torch.Tensor,
        cmcl_gather: bool = False,
        image_keys: torch.Tensor | None = None,
        text_keys: torch.Tensor | None = None,
        image_query: torch.Tensor | None = None,
        text_query: torch.Tensor | None = None,
        related_k: int = 0,
    ) -> dict[str, torch.Tensor]:
        """The unweighted losses of one step, from three encoder passes (built by ``family.prepare_inputs``):

        - image pass (images alone, bidirectional): rows ``image_is_cmcl`` give the contrastive image features, the
          others carry masked patches (``image_patch_mask``) for masked patch regression (image-only data);
        - text pass (texts alone, bidirectional): rows ``text_is_cmcl`` give the contrastive text features (captions
          and rewrites), the others are masked text-only captions for MLM (``text_mlm_labels``);
        - joint pass (image + text): per row ``joint_task`` 0 = MLM conditioned on the image (bidirectional,
          ``joint_mlm_labels``), 1 = caption generation, 2 = VQA answer generation (seq2seq with
          ``joint_source_len`` text tokens in the source; ``joint_lm_labels`` on the target, lm_loss shifts them).
        ``cmcl_pos`` (cmcl images x cmcl texts): the positives of the multi-positive contrastive loss; with
        ``cmcl_gather`` the features are gathered across workers first and ``cmcl_pos`` covers the global batch.
        With a related-sample memory and ``related_k``, the paired samples (``image_query`` / ``text_query``) add
        their most similar memory images and captions to the positives (``memory.add_related``; ``image_keys`` /
        ``text_keys``: the contrastive samples' hashed keys, -1 for a rewrite); in training mode the step's images
        and captions, gathered from every worker, then join the memory."""
        out: dict[str, torch.Tensor] = {}
        img_h = self.encode(pixel_values=image_pixels, patch_mask=image_patch_mask)
        txt_h = self.encode(input_ids=text_ids, text_valid=text_mask)
        img_feat = F.normalize(img_h[image_is_cmcl, 0].float(), dim=-1)
        txt_feat = F.normalize(txt_h[text_is_cmcl, 0].float(), dim=-1)
        memory = self.related_memory if related_k and image_keys is not None else None
        if cmcl_gather:
            img_feat, txt_feat = gather_ragged_with_grad(img_feat), gather_ragged_with_grad(txt_feat)
        if memory is not None:
            if cmcl_gather:
                image_keys, text_keys, image_query, text_query = (
                    gather_ragged_with_grad(x.long()) for x in (image_keys, text_keys, image_query, text_query))
            n_img, n_txt = img_feat.shape[0], txt_feat.shape[0]
            img_all, txt_all, pos = add_related(memory, img_feat, txt_feat, cmcl_pos, image_keys, text_keys,
                                                image_query.bool(), text_query.bool(), related_k)
            out["cmcl_related"] = img_feat.new_tensor(float(img_all.shape[0] - n_img + txt_all.shape[0] - n_txt))
        else:
            img_all, txt_all, pos = img_feat, txt_feat, cmcl_pos
        out["cmcl"] = info_nce(img_all, txt_all, self.logit_scale.exp(), pos_mask=pos)
        out["cmcl_texts"] = txt_feat.new_tensor(float(txt_all.shape[0]))
        with torch.no_grad():  # how often an image's best-scoring text is one of its positives
            best = (img_feat @ txt_feat.t()).argmax(dim=1)
            out["cmcl_top1"] = cmcl_pos.gather(1, best[:, None]).float().mean()
        if memory is not None and self.training:  # every worker pushes the global batch: one memory on all of them
            if not cmcl_gather:
                image_keys, text_keys = gather_ragged_with_grad(image_keys), gather_ragged_with_grad(text_keys)
                img_mem, txt_mem = gather_ragged_with_grad(img_feat.detach()), gather_ragged_with_grad(txt_feat.detach())
            else:
                img_mem, txt_mem = img_feat.detach(), txt_feat.detach()
            memory.push("image", img_mem, image_keys)
            captions = text_keys >= 0
            memory.push("text", txt_mem[captions], text_keys[captions])
        mim_rows = ~image_is_cmcl
        if mim_rows.any():
            pred = self.mim_head(img_h[mim_rows, 1:])
            target = patchify(image_pixels[mim_rows], self.config.patch_size)
            out["mim"] = masked_patch_loss(pred.float(), target.float(), image_patch_mask[mim_rows])
        joint_h = self.encode(pixel_values=joint_pixels, input_ids=joint_ids, text_valid=joint_mask, source_len=joint_source_len)
        joint_text = joint_h[:, joint_h.shape[1] - joint_ids.shape[1]:]
        # MLM: masked tokens of text-only captions and of captions seen with their image, one cross-entropy
        sel_t, sel_j = text_mlm_labels != -100, joint_mlm_labels != -100
        if sel_t.any() or sel_j.any():
            logits = self.lm_head(torch.cat([txt_h[:, : text_ids.shape[1]][sel_t], joint_text[sel_j]]))
            out["mlm"] = mlm_loss(logits, torch.cat([text_mlm_labels[sel_t], joint_mlm_labels[sel_j]]))
        for task, name in ((1, "seq2seq"), (2, "vqa")):
            rows = joint_task == task
            if rows.any():
                out[name] = lm_loss(self.lm_head(joint_text[rows]), joint_lm_labels[rows], shift=True)
        return out


# Known to the Auto classes, so tools that read a checkpoint's config.json recognise the model type once imported.
AutoConfig.register(MODEL_TYPE, UnimoConfig, exist_ok=True)
AutoModel.register(UnimoConfig, UnimoModel, exist_ok=True)
