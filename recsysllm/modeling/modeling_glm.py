"""GLM (Du et al. 2021) as a transformers model: attention, block, backbone, LM head.

State-dict names match THUDM's checkpoints (see GLM_REFERENCE.md) under the
``glm.`` prefix. The model takes one explicit mask form:

- ``attention_mask``: 4-D bool ``[batch, 1, query, key]``, True = may attend, where
  ``key`` = cached tokens + new tokens. Required: there is no implicit causal or
  bidirectional default (the reference code's three-way overloading of this
  argument is a known bug source).
- ``position_ids``: ``[batch, 2, seq]``, row 0 the position (RecSysLLM's inter
  position), row 1 the block position (intra position).
- ``labels``: aligned with the inputs, not shifted; -100 is ignored.

Example:
    >>> config = GLMConfig(vocab_size=64, hidden_size=32, num_layers=2,
    ...                    num_attention_heads=4, max_sequence_length=16)
    >>> model = GLMForConditionalGeneration(config).eval()
    >>> ids = torch.tensor([[5, 6, 7]])
    >>> positions = torch.stack([torch.arange(3), torch.zeros(3, dtype=torch.long)])[None]
    >>> causal = torch.ones(3, 3, dtype=torch.bool).tril()[None, None]
    >>> model(ids, positions, causal).logits.shape
    torch.Size([1, 3, 64])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils.deprecation import deprecate_kwarg

from recsysllm.modeling.configuration_glm import GLMConfig

# transformers 5.24 renamed the KV-cache argument and output field past_key_values ->
# cache (the old name still works there, with a deprecation warning); 5.23 has only the
# old field. Outputs are built with the name this transformers uses; forward takes
# `cache` and still accepts `past_key_values` (deprecate_kwarg renames it).
CACHE_FIELD = (
    "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
)

# Keyword arguments that HF Trainer / PEFT may pass and that carry nothing for us.
# `num_items_in_batch` is ignored on purpose: `accepts_loss_kwargs = False` below tells
# Trainer that our loss is the per-batch mean, so Trainer itself scales for
# gradient accumulation.
_IGNORED_KWARGS = frozenset(
    {"num_items_in_batch", "return_dict", "output_attentions", "output_hidden_states"}
)

# Added to masked scores. Finite, not -inf: a fully masked (padding) row must give a
# finite output, not NaN. Half of fp16's minimum, whatever the model dtype: it stays
# finite when autocast casts the bias to fp16, and score + bias cannot overflow to -inf.
MASKED_SCORE_BIAS = torch.finfo(torch.float16).min / 2


class GLMOutputProjection(nn.Linear):
    """A Linear that writes into the residual stream (attention.dense, mlp.dense_4h_to_h).

    Its own type so that ``_init_weights`` can give it the scaled std: transformers
    skips init calls on parameter-less modules (GLMAttention, GLMMLP) of models
    defined outside its package.
    """


# SDPA backends, chosen in the scope of each attention call (so gradient-checkpoint
# recomputation sees the same choice). cuDNN attention builds an execution plan per new
# input shape (~18 ms of CPU on an H100) and caches it. In training, where the collator
# pads widths to a multiple of 64 (TRAINING_PAD_MULTIPLE) so only a few shapes ever
# occur, it is the fastest kernel (+19% tokens/s for glm-2b-shape LoRA, benchmarks/
# RESULTS.md). Cached decoding changes the key length every step: there, re-planning
# made every call CPU-bound, so inference leaves cuDNN out. Memory-efficient attention
# takes an arbitrary additive mask without planning; FLASH_ATTENTION is the CPU kernel
# here; MATH is the fallback.
TRAINING_PAD_MULTIPLE = 64
_SDPA_BACKENDS_TRAINING = [
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.MATH,
]
_SDPA_BACKENDS_INFERENCE = [
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.MATH,
]


class GLMAttention(nn.Module):
    """Multi-head self-attention with a fused [Q | K | V] projection (all heads of Q first)."""

    def __init__(self, config: GLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.attention_dropout_prob = config.attention_dropout_prob
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = GLMOutputProjection(config.hidden_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.output_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_bias: torch.Tensor,
        past_key_values: Cache | None = None,
    ) -> torch.Tensor:
        """[batch, seq, hidden] -> [batch, seq, hidden]; attention_bias is [batch, 1, seq, key]."""
        batch, seq, hidden = hidden_states.shape
        # [batch, seq, 3 * hidden] -> three contiguous blocks, each [batch, heads, seq, head_dim]
        query, key, value = (
            part.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
            for part in self.query_key_value(hidden_states).split(hidden, dim=-1)
        )
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        with sdpa_kernel(_SDPA_BACKENDS_TRAINING if self.training else _SDPA_BACKENDS_INFERENCE):
            context = F.scaled_dot_product_attention(
                query,
                key,
                value,
                attn_mask=attention_bias,
                dropout_p=self.attention_dropout_prob if self.training else 0.0,
                scale=1.0 / math.sqrt(self.head_dim),
            )
        context = context.transpose(1, 2).reshape(batch, seq, hidden)
        return self.output_dropout(self.dense(context))


class GLMMLP(nn.Module):
    """hidden -> 4 x hidden -> GELU -> hidden."""

    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        self.gelu_approximate = config.gelu_approximate
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 4 * config.hidden_size)
        self.dense_4h_to_h = GLMOutputProjection(4 * config.hidden_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.output_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        intermediate = F.gelu(self.dense_h_to_4h(hidden_states), approximate=self.gelu_approximate)
        return self.output_dropout(self.dense_4h_to_h(intermediate))


class GLMBlock(GradientCheckpointingLayer):
    """Pre-LN transformer block. Checkpointed (recomputed in backward) when enabled."""

    def __init__(self, config: GLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.attention = GLMAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(
            config.hidden_size, eps=config.layernorm_epsilon
        )
        self.mlp = GLMMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_bias: torch.Tensor,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        # `cache`: the name GradientCheckpointingLayer drops under checkpointing (5.24).
        hidden_states = hidden_states + self.attention(
            self.input_layernorm(hidden_states), attention_bias, cache
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class GLMTransformer(nn.Module):
    """Position embeddings, blocks and the final LayerNorm (THUDM's ``transformer``)."""

    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        # max_sequence_length + 1 rows, as in the THUDM checkpoints.
        self.position_embeddings = nn.Embedding(config.max_sequence_length + 1, config.hidden_size)
        self.block_position_embeddings = nn.Embedding(
            config.max_sequence_length + 1, config.hidden_size
        )
        self.embedding_dropout = nn.Dropout(config.embedding_dropout_prob)
        self.layers = nn.ModuleList(GLMBlock(config, i) for i in range(config.num_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)

    def forward(
        self,
        word_embeddings: torch.Tensor,
        position_ids: torch.Tensor,
        attention_bias: torch.Tensor,
        past_key_values: Cache | None,
    ) -> torch.Tensor:
        hidden_states = (
            word_embeddings
            + self.position_embeddings(position_ids[:, 0])
            + self.block_position_embeddings(position_ids[:, 1])
        )
        hidden_states = self.embedding_dropout(hidden_states)
        for layer in self.layers:
            # hidden_states positional: reentrant checkpointing only tracks positional inputs.
            hidden_states = layer(hidden_states, attention_bias, cache=past_key_values)
        return self.final_layernorm(hidden_states)


class GLMPreTrainedModel(PreTrainedModel):
    """Shared init, checkpointing and loading flags of the GLM models."""

    config_class = GLMConfig
    base_model_prefix = "glm"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GLMBlock"]
    _skip_keys_device_placement = [CACHE_FIELD]
    _supports_sdpa = True
    # Our loss is the mean over the batch's labelled tokens; Trainer then scales it for
    # gradient accumulation itself instead of passing num_items_in_batch.
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """normal(0, std); output projections std / sqrt(2 * num_layers); LayerNorm 1/0."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if isinstance(module, GLMOutputProjection):
                # Two residual writes per block: keep the residual stream's variance flat in depth.
                std = std / math.sqrt(2 * self.config.num_layers)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class GLMModel(GLMPreTrainedModel):
    """The GLM backbone: word embeddings + transformer, returning final hidden states."""

    def __init__(self, config: GLMConfig) -> None:
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.transformer = GLMTransformer(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.word_embeddings = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
    ) -> BaseModelOutputWithPast:
        """Runs the backbone.

        Args:
            input_ids: [batch, seq] token ids.
            position_ids: [batch, 2, seq]; row 0 position (inter), row 1 block position (intra).
            attention_mask: [batch, 1, seq, cached + seq] bool, True = may attend.
            cache: a DynamicCache from an earlier call (updated in place); the old name
                ``past_key_values`` is accepted too (deprecated by transformers 5.24).
            use_cache: return the cache (a new DynamicCache if none was given).

        Returns:
            BaseModelOutputWithPast with last_hidden_state [batch, seq, hidden].
        """
        past_key_values = cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        _check_inputs(input_ids, position_ids, attention_mask, past_length)

        word_embeddings = self.word_embeddings(input_ids)  # [batch, seq, hidden]
        attention_bias = _attention_bias(attention_mask, word_embeddings.dtype)
        hidden_states = self.transformer(
            word_embeddings, position_ids, attention_bias, past_key_values
        )
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            **{CACHE_FIELD: past_key_values if use_cache else None},
        )


class GLMForConditionalGeneration(GLMPreTrainedModel, GenerationMixin):
    """GLM with its tied output layer: logits = final hidden @ word_embeddings.weight^T.

    ``lm_head`` shares its weight with ``glm.word_embeddings`` (declared in
    ``_tied_weights_keys``), so checkpoints carry no ``lm_head`` key and PEFT/save
    see one parameter.
    """

    _tied_weights_keys = {"lm_head.weight": "glm.word_embeddings.weight"}

    def __init__(self, config: GLMConfig) -> None:
        super().__init__(config)
        self.glm = GLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.glm.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.glm.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        **kwargs: object,
    ) -> CausalLMOutputWithPast:
        """Logits and, given labels, the loss.

        Args:
            input_ids: [batch, seq] token ids.
            position_ids: [batch, 2, seq]; row 0 position (inter), row 1 block position (intra).
            attention_mask: [batch, 1, seq, cached + seq] bool, True = may attend. Required.
            labels: [batch, seq], aligned with input_ids (labels[b, i] is predicted from
                position i; not shifted). -100 is ignored.
            cache: a DynamicCache from an earlier call (updated in place); the old name
                ``past_key_values`` is accepted too (deprecated by transformers 5.24).
            use_cache: return the cache (a new DynamicCache if none was given).
            logits_to_keep: 0 = logits for every position; n > 0 = only for the last n
                (the transformers convention; a prompt pass needs just the last column,
                and [batch, seq, vocab] logits dominate its cost). Not with labels.
            **kwargs: keyword arguments Trainer/PEFT pass that carry nothing here
                (num_items_in_batch, return_dict, ...). Any other tensor is an error.

        Returns:
            CausalLMOutputWithPast(loss, logits [batch, seq, vocab], cache) (the cache
            field is ``past_key_values`` under transformers 5.23).
            loss is the mean cross-entropy over labelled tokens (0 if there are none).
        """
        _check_extra_kwargs(kwargs)
        outputs = self.glm(
            input_ids, position_ids, attention_mask, cache=cache, use_cache=use_cache
        )
        hidden = outputs.last_hidden_state  # [batch, seq, hidden]
        if logits_to_keep:
            if labels is not None:
                raise ValueError("logits_to_keep cannot be combined with labels")
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)  # [batch, seq or logits_to_keep, vocab]
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(
                    f"labels has shape {tuple(labels.shape)}, expected input_ids' shape "
                    f"{tuple(input_ids.shape)} (labels are aligned with inputs, not shifted)"
                )
            summed = F.cross_entropy(
                logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
            )
            # clamp: a batch without labelled tokens gives 0, not NaN.
            loss = summed / (labels != -100).sum().clamp(min=1)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)}
        )


def _attention_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask [batch, 1, query, key] -> additive bias [batch, 1, query, key] in ``dtype``."""
    bias = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
    return bias.masked_fill_(~attention_mask, MASKED_SCORE_BIAS)


def _check_inputs(
    input_ids: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    past_length: int,
) -> None:
    """Shape and dtype checks with errors that say what the model expects."""
    if input_ids is None or input_ids.dim() != 2:
        shape = None if input_ids is None else tuple(input_ids.shape)
        raise ValueError(f"input_ids must be [batch, seq] token ids, got shape {shape}")
    batch, seq = input_ids.shape
    if position_ids is None or tuple(position_ids.shape) != (batch, 2, seq):
        shape = None if position_ids is None else tuple(position_ids.shape)
        raise ValueError(
            f"position_ids must be [batch, 2, seq] = {(batch, 2, seq)} (row 0 position, "
            f"row 1 block position), got {shape}"
        )
    if attention_mask is None:
        raise ValueError(
            "attention_mask is required: a 4-D bool tensor [batch, 1, seq, cached + seq], "
            "True = may attend (GLM has no implicit causal or bidirectional default)"
        )
    expected = (batch, 1, seq, past_length + seq)
    if attention_mask.dtype != torch.bool or tuple(attention_mask.shape) != expected:
        raise ValueError(
            f"attention_mask must be a bool tensor of shape [batch, 1, seq, cached + seq] = "
            f"{expected}, got {attention_mask.dtype} {tuple(attention_mask.shape)}"
        )


def _check_extra_kwargs(kwargs: dict[str, object]) -> None:
    for name, value in kwargs.items():
        if name in _IGNORED_KWARGS:
            continue
        if isinstance(value, torch.Tensor):
            raise TypeError(
                f"GLMForConditionalGeneration.forward got an unexpected tensor argument {name!r}"
            )
        if value is not None:
            raise TypeError(
                f"GLMForConditionalGeneration.forward got an unexpected argument {name!r}={value!r}"
            )
