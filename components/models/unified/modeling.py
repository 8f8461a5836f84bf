"""The unified transformer of Li et al. (2021, arXiv 2112.07074): one modality-agnostic transformer encoder shared by
images and text, with modality-specific tokenizers (embeddings) and modality-specific heads.

- text tokenizer: BERT embeddings (``transformers``' ``BertEmbeddings``: word + position + token type, LayerNorm);
- image tokenizer: ViT embeddings (``ViTEmbeddings``: linear patch projection, [CLS], learned positions; a learned
  mask token when the MIM head is built);
- shared encoder: a ``BertEncoder`` (post-LN BERT layers), run on either modality's token sequence alone (the
  training data is unpaired: no sequence ever mixes the two modalities);
- heads: BERT's MLM head (``BertOnlyMLMHead``, decoder tied to the word embeddings); and, built only when the
  recipe's losses need them (the sizes come from the teachers' configs at build time and are saved in the config,
  so a checkpoint reloads without its teachers): ``image_classifier`` (the supervised image teacher's classes, for
  logit distillation and label cross-entropy), ``image_distill_proj`` / ``text_distill_proj`` (student width ->
  teacher width, for hidden-state distillation), ``mim_head`` (masked patch pixel regression).
``forward`` runs the student side of one training step (text, image and optional masked-image passes) in one call,
so a data-parallel wrapper sees one forward per step."""
from __future__ import annotations

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    BertConfig,
    PreTrainedConfig,
    ViTConfig,
)
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import (
    BertEmbeddings,
    BertEncoder,
    BertLMPredictionHead,
    BertOnlyMLMHead,
)
from transformers.models.vit.modeling_vit import ViTEmbeddings
from vlforge.components.models.common.pretrained import ImageTextPreTrainedModel

MODEL_TYPE = "vlforge_unified"


class UnifiedConfig(PreTrainedConfig):
    model_type = MODEL_TYPE
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    image_size: int = 224
    patch_size: int = 16
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    num_classes: int = 0  # image classifier classes (the supervised image teacher's); 0: no classifier
    image_distill_size: int = 0  # image teacher width for hidden-state distillation; 0: no projection
    text_distill_size: int = 0  # text teacher width for hidden-state distillation; 0: no projection
    use_mim_head: bool = False
    tie_word_embeddings: bool = True

    def bert_config(self) -> BertConfig:
        config = BertConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
            hidden_dropout_prob=self.hidden_dropout_prob, attention_probs_dropout_prob=self.attention_probs_dropout_prob,
            max_position_embeddings=self.max_position_embeddings, layer_norm_eps=self.layer_norm_eps,
            pad_token_id=self.pad_token_id, initializer_range=self.initializer_range,
        )
        config._attn_implementation = "sdpa"
        return config

    def vit_config(self) -> ViTConfig:
        return ViTConfig(
            hidden_size=self.hidden_size, image_size=self.image_size, patch_size=self.patch_size,
            hidden_dropout_prob=self.hidden_dropout_prob, initializer_range=self.initializer_range,
        )


class UnifiedModel(ImageTextPreTrainedModel):
    config: UnifiedConfig
    config_class = UnifiedConfig
    base_model_prefix = "unified"
    _supports_sdpa = True
    _tied_weights_keys = {  # noqa: RUF012 (transformers reads this class attribute)
        "mlm_head.predictions.decoder.weight": "text_embeddings.word_embeddings.weight",
        "mlm_head.predictions.decoder.bias": "mlm_head.predictions.bias",
    }

    def __init__(self, config: UnifiedConfig):
        super().__init__(config)
        bert, dim = config.bert_config(), config.hidden_size
        self._bert_config = bert  # the encoder's view of the config (attention implementation, mask creation)
        self.text_embeddings = BertEmbeddings(bert)
        self.image_embeddings = ViTEmbeddings(config.vit_config(), use_mask_token=config.use_mim_head)
        self.encoder = BertEncoder(bert)
        self.mlm_head = BertOnlyMLMHead(bert)
        if config.num_classes:
            self.image_classifier = nn.Linear(dim, config.num_classes)
        if config.image_distill_size:
            self.image_distill_proj = nn.Linear(dim, config.image_distill_size)
        if config.text_distill_size:
            self.text_distill_proj = nn.Linear(dim, config.text_distill_size)
        if config.use_mim_head:
            self.mim_head = nn.Linear(dim, config.patch_size**2 * 3)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, BertLMPredictionHead):
            init.zeros_(module.bias)
        elif isinstance(module, BertEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)
        elif isinstance(module, ViTEmbeddings):
            init.trunc_normal_(module.position_embeddings, std=self.config.initializer_range)
            init.trunc_normal_(module.cls_token, std=self.config.initializer_range)
            if module.mask_token is not None:
                init.zeros_(module.mask_token)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_embeddings.word_embeddings

    def get_output_embeddings(self) -> nn.Linear:
        return self.mlm_head.predictions.decoder

    def shared_parameter_names(self) -> list[str]:
        """The modality-agnostic parameters (the encoder), which both the text and the image losses train."""
        return [f"encoder.{n}" for n, _ in self.encoder.named_parameters()]

    # ---- the two modality paths through the one encoder ------------------------------------------------------
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.text_embeddings(input_ids=input_ids)
        mask = create_bidirectional_mask(config=self._bert_config, inputs_embeds=x, attention_mask=attention_mask)
        return self.encoder(x, attention_mask=mask).last_hidden_state

    def encode_image(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, 1 + N, D), [CLS] first; masked patches (MIM) take the learned mask token."""
        return self.encoder(self.image_embeddings(pixel_values, bool_masked_pos=patch_mask)).last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        mim_pixel_values: torch.Tensor | None = None,
        mim_patch_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The student's hidden states for one step: ``text`` (the captions of one half of the batch), ``image``
        (the images of the other half) and ``image_masked`` (those images with ``mim_patch_mask`` applied)."""
        out: dict[str, torch.Tensor] = {}
        if input_ids is not None:
            out["text"] = self.encode_text(input_ids, attention_mask if attention_mask is not None else torch.ones_like(input_ids))
        if pixel_values is not None:
            out["image"] = self.encode_image(pixel_values)
        if mim_pixel_values is not None:
            out["image_masked"] = self.encode_image(mim_pixel_values, mim_patch_mask)
        return out


# Known to the Auto classes, so tools reading a checkpoint's config.json recognise the model type.
AutoConfig.register(MODEL_TYPE, UnifiedConfig, exist_ok=True)
AutoModel.register(UnifiedConfig, UnifiedModel, exist_ok=True)
