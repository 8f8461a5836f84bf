"""The UniT network (Hu & Singh 2021, arXiv 2102.10772), after ``facebookresearch/mmf``'s ``mmf/models/unit/``
(``unit.py``, ``unit_base_model.py``, ``transformer.py``, ``backbone.py``), rebuilt from ``transformers`` pieces.

- Image encoder (DETR's): a ResNet (``ResNetModel`` from a ``ResNetConfig``; ResNet-50 in the paper) whose last
  feature map is projected by a 1x1 conv to the encoder width, given DETR's normalised sine positions
  (``DetrSinePositionEmbedding``) and encoded by post-norm ``DetrEncoderLayer`` blocks; a learned task token is
  prefixed to the sequence and dropped from the output (MMF ``use_task_embedding_in_img_encoder``), and the
  encoder's input is added back to its output (MMF ``residual_in_encoder``). Image tokens and positions are then
  projected to the decoder width (``enc2dec_proj``, ``pos_embed_proj``).
- Text encoder: ``BertModel`` (embeddings + encoder; no pooler, which UniT never reads) with a learned task token
  inserted before the [CLS] embedding and dropped from the output (MMF ``forward_bert_with_task_idx``); hidden
  states and BERT's position embeddings are projected to the decoder width (``bert_projection``,
  ``bert_pos_projection``). Text-only tasks keep only the [CLS] state (MMF ``keep_only_bert_cls`` for GLUE).
- One shared decoder (``DetrDecoderLayer`` x N + a final LayerNorm): each task has its own learned query embeddings
  (the decoder input is zeros, the queries are the query positions, as DETR's ``pass_pos_and_query``); the memory is
  the concatenation of the encoded modalities the task uses (image tokens, then text tokens; text padding masked).
- Per-task heads on the first query's final state: ``BertPredictionHeadTransform`` + ``Linear`` (MMF's
  ``classifiers``); the ITM head ends in ``heads.ITMHead``.
- Detection tasks (``config.detection_tasks``) are DETR's: their own ``detection_num_queries`` queries decode over
  the image memory only, and every query's state goes through a class layer (``detection_classes`` + no-object) and
  DETR's 3-layer box MLP (``DetrMLPPredictionHead``, sigmoid: ``(cx, cy, w, h)`` normalised), on the final decoder
  layer and, for DETR's auxiliary losses, on every earlier one (through the same final LayerNorm, as DETR's
  ``return_intermediate``); the loss is ``set_prediction.set_prediction_loss`` (Hungarian matching, CE + L1 + GIoU).
  These heads keep the transformer's Xavier initialisation (DETR leaves its heads at PyTorch's default).

``UnitModel.forward`` runs one task (the whole objective of a step, so a data-parallel wrapper sees one forward).
Because a step uses only its task's queries, head and encoders, and the project's loop wraps the model in
DistributedDataParallel with ``find_unused_parameters=False``, the returned loss adds every trainable parameter
times zero: all parameters get a (zero) gradient each step, identically on one or many workers. With AdamW that
means a part unused this step still moves by its decaying momentum and weight decay (MMF, which runs DDP with
``find_unused_parameters: true``, leaves unused gradients empty instead)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    BertConfig,
    BertModel,
    DetrConfig,
    PreTrainedConfig,
    ResNetConfig,
    ResNetModel,
)
from transformers import initialization as init
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform
from transformers.models.detr.modeling_detr import (
    DetrDecoderLayer,
    DetrEncoderLayer,
    DetrMLPPredictionHead,
    DetrSinePositionEmbedding,
)
from vlforge.components.losses import itm_loss
from vlforge.components.models.common.pretrained import ImageTextPreTrainedModel
from vlforge.components.models.heads import ITMHead
from vlforge.components.models.set_prediction import SetLossWeights, set_prediction_loss

MODEL_TYPE = "vlforge_unit"


class UnitConfig(PreTrainedConfig):
    model_type = MODEL_TYPE
    # tasks: names (their order is the task index of the task embeddings) and the label count of each head
    task_names: tuple[str, ...] | list[str] = ("vqa", "itm", "text_cls")
    task_num_labels: tuple[int, ...] | list[int] = (23, 2, 6)
    cls_only_tasks: tuple[str, ...] | list[str] = ()  # tasks that decode over the text [CLS] state only (MMF: GLUE)
    vqa_loss: str = "bce"  # "bce": MMF's logit BCE x number of answers; "ce": softmax cross-entropy
    # image encoder: ResNet backbone + DETR transformer encoder
    backbone_embedding_size: int = 64
    backbone_hidden_sizes: tuple[int, ...] | list[int] = (256, 512, 1024, 2048)
    backbone_depths: tuple[int, ...] | list[int] = (3, 4, 6, 3)
    backbone_layer_type: str = "bottleneck"
    encoder_hidden_size: int = 256
    encoder_layers: int = 6
    encoder_heads: int = 8
    encoder_ffn_dim: int = 2048
    # text encoder: BERT
    vocab_size: int = 30522
    text_hidden_size: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_intermediate_size: int = 3072
    max_text_positions: int = 512
    pad_token_id: int = 0
    # shared decoder
    decoder_hidden_size: int = 768
    decoder_layers: int = 6
    decoder_heads: int = 8
    decoder_ffn_dim: int = 2048
    num_queries: int = 25
    dropout: float = 0.1
    task_embeddings: bool = True
    # detection tasks (DETR's set prediction); a checkpoint saved before they existed has none
    detection_tasks: tuple[str, ...] | list[str] = ()
    detection_classes: tuple[str, ...] | list[str] = ()
    detection_num_queries: int = 100
    detection_aux_loss: bool = True
    detection_eos_coef: float = 0.1
    detection_ce_weight: float = 1.0
    detection_l1_weight: float = 5.0
    detection_giou_weight: float = 2.0


def _detr_config(d_model: int, heads: int, ffn: int, dropout: float) -> DetrConfig:
    cfg = DetrConfig(d_model=d_model, encoder_attention_heads=heads, decoder_attention_heads=heads,
                     encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, dropout=dropout, attention_dropout=dropout,
                     activation_dropout=0.0, activation_function="relu", use_timm_backbone=False, use_pretrained_backbone=False)
    cfg._attn_implementation = "sdpa"
    return cfg


class UnitModel(ImageTextPreTrainedModel):
    config: UnitConfig
    config_class = UnitConfig
    base_model_prefix = "unit"

    def __init__(self, config: UnitConfig):
        super().__init__(config)
        d_enc, d_dec, n_tasks = config.encoder_hidden_size, config.decoder_hidden_size, len(config.task_names)
        # ---- image encoder
        self.backbone = ResNetModel(ResNetConfig(
            embedding_size=config.backbone_embedding_size, hidden_sizes=list(config.backbone_hidden_sizes),
            depths=list(config.backbone_depths), layer_type=config.backbone_layer_type))
        self.input_proj = nn.Conv2d(config.backbone_hidden_sizes[-1], d_enc, kernel_size=1)
        self.position_embedding = DetrSinePositionEmbedding(d_enc // 2, normalize=True)
        enc_cfg = _detr_config(d_enc, config.encoder_heads, config.encoder_ffn_dim, config.dropout)
        self.encoder_layers = nn.ModuleList(DetrEncoderLayer(enc_cfg) for _ in range(config.encoder_layers))
        self.image_task_embeddings = nn.Embedding(n_tasks, d_enc) if config.task_embeddings else None
        self.enc2dec_proj = nn.Linear(d_enc, d_dec) if d_enc != d_dec else nn.Identity()
        self.pos_embed_proj = nn.Linear(d_enc, d_dec) if d_enc != d_dec else nn.Identity()
        # ---- text encoder
        self.text_encoder = BertModel(BertConfig(
            vocab_size=config.vocab_size, hidden_size=config.text_hidden_size, num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads, intermediate_size=config.text_intermediate_size,
            max_position_embeddings=config.max_text_positions, pad_token_id=config.pad_token_id,
            hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.dropout), add_pooling_layer=False)
        self.text_task_embeddings = nn.Embedding(n_tasks, config.text_hidden_size) if config.task_embeddings else None
        self.bert_projection = nn.Linear(config.text_hidden_size, d_dec)
        self.bert_pos_projection = nn.Linear(config.text_hidden_size, d_dec)
        # ---- shared decoder, per-task queries and heads
        dec_cfg = _detr_config(d_dec, config.decoder_heads, config.decoder_ffn_dim, config.dropout)
        self.decoder_layers = nn.ModuleList(DetrDecoderLayer(dec_cfg) for _ in range(config.decoder_layers))
        self.decoder_norm = nn.LayerNorm(d_dec)
        detection = set(config.detection_tasks)
        self.query_embeds = nn.ModuleDict({
            t: nn.Embedding(config.detection_num_queries if t in detection else config.num_queries, d_dec)
            for t in config.task_names})
        head_cfg = BertConfig(hidden_size=d_dec, hidden_act="gelu", layer_norm_eps=1e-12)
        self.heads = nn.ModuleDict({
            t: nn.Sequential(BertPredictionHeadTransform(head_cfg), ITMHead(d_dec) if t == "itm" else nn.Linear(d_dec, n))
            for t, n in zip(config.task_names, config.task_num_labels) if t not in detection
        })
        for head in self.heads.values():
            for module in head.modules():
                module._unit_head = True  # initialised like BERT's classifiers (below)
        for t in config.task_names:  # DETR's class layer (+ no-object) and box MLP
            if t in detection:
                self.heads[t] = nn.ModuleDict({"class": nn.Linear(d_dec, len(config.detection_classes) + 1),
                                               "box": DetrMLPPredictionHead(d_dec, d_dec, 4, 3)})
        self.head_dropout = nn.Dropout(config.dropout)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # DETR's transformer: Xavier-uniform on every matrix; embeddings (queries, task tokens) N(0, 1) as nn.Embedding.
        # The heads: N(0, 0.02) as BERT's classifiers, so each task starts near chance rather than confidently wrong.
        if isinstance(module, nn.Linear) and getattr(module, "_unit_head", False):
            init.normal_(module.weight, std=0.02)
            init.zeros_(module.bias)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=1.0)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def task_index(self, task: str) -> int:
        return list(self.config.task_names).index(task)

    # ---- encoders ---------------------------------------------------------------------------------------
    def encode_image(self, pixel_values: torch.Tensor, task: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Image memory and its positions at the decoder width: (B, N, D_dec) each."""
        feat = self.input_proj(self.backbone(pixel_values).last_hidden_state)
        pos = self.position_embedding(feat.shape, feat.device, feat.dtype)
        src, pos = feat.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2)
        x, p = src, pos
        if self.image_task_embeddings is not None:
            token = self.image_task_embeddings.weight[self.task_index(task)].to(src.dtype)
            x = torch.cat([token.expand(src.shape[0], 1, -1), src], dim=1)
            p = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
        for layer in self.encoder_layers:
            x = layer(x, attention_mask=None, spatial_position_embeddings=p)
        memory = src + x[:, x.shape[1] - src.shape[1]:]  # drop the task token; MMF's residual_in_encoder
        return self.enc2dec_proj(memory), self.pos_embed_proj(pos)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Text memory, its positions (B, L, D_dec) and its keep-mask (B, L); [CLS] only for a text-only task."""
        bert = self.text_encoder
        x = bert.embeddings(input_ids=input_ids)
        mask = attention_mask
        if self.text_task_embeddings is not None:
            token = self.text_task_embeddings.weight[self.task_index(task)].to(x.dtype)
            x = torch.cat([token.expand(x.shape[0], 1, -1), x], dim=1)
            mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        additive = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        hidden = bert.encoder(x, attention_mask=additive).last_hidden_state[:, x.shape[1] - input_ids.shape[1]:]
        positions = bert.embeddings.position_embeddings(torch.arange(input_ids.shape[1], device=input_ids.device))
        text = self.bert_projection(hidden)
        text_pos = self.bert_pos_projection(positions)[None].expand(text.shape[0], -1, -1)
        keep = attention_mask.bool()
        if task in self.config.cls_only_tasks:
            text, text_pos, keep = text[:, :1], text_pos[:, :1], keep[:, :1]
        return text, text_pos, keep

    # ---- decoder and heads -------------------------------------------------------------------------------
    def decoder_states(self, task: str, memory: torch.Tensor, memory_pos: torch.Tensor, keep: torch.Tensor,
                       every_layer: bool = False) -> list[torch.Tensor]:
        """The task's queries decoded over ``memory``: the final layer's states (B, Q, D) after the final LayerNorm,
        or (``every_layer``) each layer's, first to last, each through that LayerNorm (DETR's intermediate outputs)."""
        queries = self.query_embeds[task].weight[None].expand(memory.shape[0], -1, -1).to(memory.dtype)
        hidden = torch.zeros_like(queries)
        cross_mask = (~keep)[:, None, None, :].to(memory.dtype) * torch.finfo(memory.dtype).min
        states = []
        for k, layer in enumerate(self.decoder_layers):
            hidden = layer(hidden, attention_mask=None, spatial_position_embeddings=memory_pos,
                           object_queries_position_embeddings=queries, encoder_hidden_states=memory,
                           encoder_attention_mask=cross_mask)
            if every_layer or k == len(self.decoder_layers) - 1:
                states.append(self.decoder_norm(hidden))
        return states

    def decode(self, task: str, memory: torch.Tensor, memory_pos: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The task's logits (B, num_labels) from its first query's final decoder state."""
        pooled = self.decoder_states(task, memory, memory_pos, keep)[-1][:, 0]
        return self.heads[task](self.head_dropout(pooled))

    def detection_outputs(
        self, task: str, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """A detection task's class logits (B, Q, C + 1; the last is no-object) and boxes (B, Q, 4; cx, cy, w, h in
        [0, 1]) from the final decoder layer, and the same from each earlier layer when ``detection_aux_loss``."""
        if task not in self.config.detection_tasks:
            raise ValueError(f"'{task}' is not a detection task of this model (its detection tasks: "
                             f"{', '.join(self.config.detection_tasks) or 'none'})")
        img, img_pos = self.encode_image(pixel_values, task)
        keep = torch.ones(img.shape[:2], dtype=torch.bool, device=img.device)
        states = self.decoder_states(task, img, img_pos, keep, every_layer=self.config.detection_aux_loss)
        head = self.heads[task]
        outs = [(head["class"](h), head["box"](h).sigmoid()) for h in states]
        return outs[-1][0], outs[-1][1], outs[:-1]

    def detection_loss(self, task: str, pixel_values: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """DETR's set loss of a detection task on ``targets`` (per image ``class_labels`` (n,), ``boxes`` (n, 4))."""
        logits, boxes, aux = self.detection_outputs(task, pixel_values)
        c = self.config
        weights = SetLossWeights(ce=c.detection_ce_weight, l1=c.detection_l1_weight, giou=c.detection_giou_weight,
                                 eos_coef=c.detection_eos_coef)
        return set_prediction_loss(logits, boxes, targets, aux, weights)

    def task_logits(
        self,
        task: str,
        pixel_values: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of ``task`` for each decoded example. Each image and each text is encoded once; ``image_index`` /
        ``text_index`` pick, for every example, which (default: example i takes image i / text i)."""
        memories, positions, keeps = [], [], []
        if pixel_values is not None:
            img, img_pos = self.encode_image(pixel_values, task)
            if image_index is not None:
                img, img_pos = img[image_index], img_pos[image_index]
            memories.append(img)
            positions.append(img_pos)
            keeps.append(torch.ones(img.shape[:2], dtype=torch.bool, device=img.device))
        if input_ids is not None:
            text, text_pos, keep = self.encode_text(input_ids, attention_mask, task)
            if text_index is not None:
                text, text_pos, keep = text[text_index], text_pos[text_index], keep[text_index]
            memories.append(text)
            positions.append(text_pos)
            keeps.append(keep)
        if not memories:
            raise ValueError("a UniT task needs an image, a text or both")
        dtype = memories[0].dtype
        return self.decode(task, torch.cat([m.to(dtype) for m in memories], 1),
                           torch.cat([p.to(dtype) for p in positions], 1), torch.cat(keeps, 1))

    def task_loss(self, task: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if task == "itm":
            return itm_loss(logits, labels)
        if task == "vqa" and self.config.vqa_loss == "bce":
            # MMF: binary_cross_entropy_with_logits (mean) x the number of answers, on one-hot targets here
            # (the scene questions have one answer each, VQAv2's soft scores do not apply)
            target = F.one_hot(labels, logits.shape[-1]).float()
            return F.binary_cross_entropy_with_logits(logits.float(), target) * logits.shape[-1]
        return F.cross_entropy(logits.float(), labels)

    def forward(
        self,
        task: str,
        labels: torch.Tensor | list[dict[str, torch.Tensor]],
        pixel_values: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One task's loss (+ every trainable parameter x 0, see the module docstring), logits and accuracy. For a
        detection task, ``labels`` is one target dict per image (``detection_loss``) and the result carries DETR's
        loss terms, ``accuracy`` being the matched queries' class accuracy."""
        if task in self.config.detection_tasks:
            terms = self.detection_loss(task, pixel_values, labels)
            loss = terms.pop("loss")
            if torch.is_grad_enabled():
                loss = loss + 0.0 * sum(p.sum() for p in self.parameters() if p.requires_grad)
            accuracy = terms.pop("matched_accuracy")
            return {"loss": loss, **terms, "accuracy": accuracy}
        logits = self.task_logits(task, pixel_values, image_index, input_ids, attention_mask, text_index)
        loss = self.task_loss(task, logits, labels)
        if torch.is_grad_enabled():
            loss = loss + 0.0 * sum(p.sum() for p in self.parameters() if p.requires_grad)
        accuracy = (logits.argmax(dim=-1) == labels).float().mean()
        return {"loss": loss, "logits": logits, "accuracy": accuracy.detach()}


# Known to the Auto classes, so tools that read a checkpoint's config.json recognise the model type once imported.
AutoConfig.register(MODEL_TYPE, UnitConfig, exist_ok=True)
AutoModel.register(UnitConfig, UnitModel, exist_ok=True)
