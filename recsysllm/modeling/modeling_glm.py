"""GLM (Du et al. 2021) as a transformers model: attention, block, backbone, LM head.

State-dict names match THUDM's checkpoints (see GLM_REFERENCE.md) under the
``glm.`` prefix. The model takes one explicit mask form:

- ``attention_mask``: 4-D bool ``[batch, 1, query, key]``, True = may attend, where
  ``key`` = cached tokens + new tokens. Required: there is no implicit causal or
  bidirectional default (the reference code's three-way overloading of this
  argument is a known bug source). Without a cache, ``attention_intervals``
  ``[batch, 2, seq]`` may stand in for it: query ``i`` sees keys ``[start_i, end_i)``
  (the collator's packed prefix-LM rows are exactly that). With
  ``config.attention_implementation == "flex"`` those run FlexAttention on a block mask
  built from the intervals (fully masked blocks skipped, no dense mask anywhere);
  otherwise the dense mask is built from them on the device.
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

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, flex_attention
from torch.utils.checkpoint import checkpoint
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
_IGNORED_KWARGS = frozenset({"return_dict", "output_attentions", "output_hidden_states"})

# Labelled rows per chunk of the CPU loss path: a chunk's logits are [chunk, vocab] fp32
# (200 MB at vocab 50304), recomputed in backward instead of kept.
LOSS_CHUNK_TOKENS = 1024

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


# FlexAttention's sparse block (query and key tiles of the block mask).
FLEX_BLOCK_SIZE = 128

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
        attention_bias: torch.Tensor | BlockMask,
        past_key_values: Cache | None = None,
    ) -> torch.Tensor:
        """[batch, seq, hidden] -> [batch, seq, hidden].

        attention_bias: additive [batch, 1, seq, key] (SDPA) or a BlockMask (FlexAttention).
        """
        batch, seq, hidden = hidden_states.shape
        # [batch, seq, 3 * hidden] -> three contiguous blocks, each [batch, heads, seq, head_dim]
        query, key, value = (
            part.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
            for part in self.query_key_value(hidden_states).split(hidden, dim=-1)
        )
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        if isinstance(attention_bias, BlockMask):
            if self.training and self.attention_dropout_prob > 0:
                raise ValueError(
                    "attention_implementation 'flex' has no attention dropout: set "
                    "attention_dropout_prob=0 or use 'sdpa'"
                )
            attend = _compiled_flex_attention() if query.is_cuda else flex_attention
            context = attend(
                query, key, value, block_mask=attention_bias, scale=1.0 / math.sqrt(self.head_dim)
            )
            context = context.transpose(1, 2).reshape(batch, seq, hidden)
            return self.output_dropout(self.dense(context))
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
        attention_bias: torch.Tensor | BlockMask,
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
        attention_bias: torch.Tensor | BlockMask,
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
    # Trainer passes num_items_in_batch (the labelled tokens of the whole optimizer step,
    # all micro-batches and ranks): the loss is then summed cross-entropy / that count,
    # so accumulation and packing never reweight tokens.
    accepts_loss_kwargs = True

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
        attention_intervals: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPast:
        """Runs the backbone.

        Args:
            input_ids: [batch, seq] token ids.
            position_ids: [batch, 2, seq]; row 0 position (inter), row 1 block position (intra).
            attention_mask: [batch, 1, seq, cached + seq] bool, True = may attend.
            cache: a DynamicCache from an earlier call (updated in place); the old name
                ``past_key_values`` is accepted too (deprecated by transformers 5.24).
            use_cache: return the cache (a new DynamicCache if none was given).
            attention_intervals: [batch, 2, seq] long, instead of attention_mask when
                nothing is cached: query i sees keys [start_i, end_i) (0, 0: none).

        Returns:
            BaseModelOutputWithPast with last_hidden_state [batch, seq, hidden].
        """
        past_key_values = cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        _check_inputs(input_ids, position_ids, attention_mask, past_length, attention_intervals)

        word_embeddings = self.word_embeddings(input_ids)  # [batch, seq, hidden]
        if attention_intervals is not None and self.config.attention_implementation == "flex":
            attention_bias = interval_block_mask(attention_intervals)
        else:
            if attention_intervals is not None:
                attention_mask = intervals_to_mask(attention_intervals)
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
        attention_intervals: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_logits: bool = True,
        label_allowed: torch.Tensor | None = None,
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
            attention_intervals: [batch, 2, seq] long, instead of attention_mask when
                nothing is cached: query i sees keys [start_i, end_i) (0, 0: none);
                FlexAttention when ``config.attention_implementation == "flex"``.
            num_items_in_batch: divide the summed loss by this instead of this batch's
                labelled tokens (Trainer's count over the whole optimizer step).
            return_logits: False (with labels): no logits; the head and the loss run on
                the labelled positions only, chunked on CPU and fused (Liger-Kernel,
                when installed) on CUDA, never holding [tokens, vocab] logits at once.
            label_allowed: [labelled tokens, K] long (``recsysllm.item_loss``): each
                labelled token's softmax runs over its row's token ids only (-1 pads; an
                all -1 row: the whole vocabulary). Rows follow ``labels != -100``
                row-major.
            **kwargs: keyword arguments Trainer/PEFT pass that carry nothing here
                (return_dict, ...). Any other tensor is an error.

        Returns:
            CausalLMOutputWithPast(loss, logits [batch, seq, vocab] or None, cache) (the
            cache field is ``past_key_values`` under transformers 5.23). loss is the
            summed cross-entropy over labelled tokens divided by ``num_items_in_batch``
            or by their count (0 if there are none).
        """
        _check_extra_kwargs(kwargs)
        outputs = self.glm(
            input_ids,
            position_ids,
            attention_mask,
            cache=cache,
            use_cache=use_cache,
            attention_intervals=attention_intervals,
        )
        hidden = outputs.last_hidden_state  # [batch, seq, hidden]
        if logits_to_keep:
            if labels is not None:
                raise ValueError("logits_to_keep cannot be combined with labels")
            hidden = hidden[:, -logits_to_keep:]
        if labels is not None:
            check_label_shape(labels, input_ids.shape)
        if not return_logits and labels is None:
            raise ValueError("return_logits=False needs labels (the loss is all it returns)")
        logits = loss = None
        if return_logits:
            logits = self.lm_head(hidden)  # [batch, seq or logits_to_keep, vocab]
        if label_allowed is not None and labels is None:
            raise ValueError("label_allowed needs labels")
        if labels is not None:
            if logits is not None:
                summed = logits_cross_entropy(logits, labels, label_allowed)
            else:
                summed = labelled_cross_entropy(hidden, self.lm_head, labels, label_allowed)
            loss = per_item_loss(summed, labels, num_items_in_batch)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)}
        )


def check_label_shape(labels: torch.Tensor, input_shape: torch.Size) -> None:
    """Labels are aligned with the inputs (not shifted): the same shape as input_ids."""
    if labels.shape != input_shape:
        raise ValueError(
            f"labels has shape {tuple(labels.shape)}, expected input_ids' shape "
            f"{tuple(input_shape)} (labels are aligned with inputs, not shifted)"
        )


def per_item_loss(
    summed: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None
) -> torch.Tensor:
    """``summed`` cross-entropy / labelled tokens, or / Trainer's ``num_items_in_batch``.

    A batch without labelled tokens gives 0, not NaN (the count is clamped to 1).
    """
    if num_items_in_batch is None:
        num_items_in_batch = (labels != -100).sum()
    if torch.is_tensor(num_items_in_batch):
        return summed / num_items_in_batch.to(summed.device).clamp(min=1)
    return summed / max(num_items_in_batch, 1)


def logits_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, label_allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """Summed fp32 cross-entropy of full logits [batch, seq, vocab] at the labelled
    positions, each restricted to its ``label_allowed`` row when given."""
    if label_allowed is None:
        return F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
        )
    selected = labels != -100
    return F.cross_entropy(
        restrict_logits(logits[selected].float(), label_allowed), labels[selected], reduction="sum"
    )


def restrict_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``logits`` [N, V] with every token outside its row's ``allowed`` [N, K] set to
    -inf; rows whose ``allowed`` is all -1 are returned unchanged."""
    if allowed.shape[0] != logits.shape[0]:
        raise ValueError(
            f"label_allowed has {allowed.shape[0]} rows for {logits.shape[0]} labelled tokens "
            "(one row per labels != -100, row-major)"
        )
    vocab = logits.shape[-1]
    valid = allowed >= 0
    if (allowed >= vocab).any():
        raise ValueError(f"label_allowed holds token ids >= the vocabulary size {vocab}")
    # Invalid entries scatter into a spare column that is dropped afterwards.
    index = torch.where(valid, allowed, torch.full_like(allowed, vocab))
    keep = torch.zeros(logits.shape[0], vocab + 1, dtype=torch.bool, device=logits.device)
    keep.scatter_(1, index.to(logits.device), True)
    keep = keep[:, :vocab]
    keep[~valid.any(1).to(logits.device)] = True
    return logits.masked_fill(~keep, float("-inf"))


def labelled_cross_entropy(
    hidden: torch.Tensor,
    lm_head: nn.Linear,
    labels: torch.Tensor,
    label_allowed: torch.Tensor | None = None,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """Summed fp32 cross-entropy of ``lm_head(hidden)`` at the labelled positions only.

    In blank infilling only Part B carries labels: the head (hidden x vocab per token,
    the largest matmul of a small model) runs on those rows alone. On CUDA with
    Liger-Kernel installed, its fused linear cross-entropy computes loss and gradients
    chunk by chunk without materialising the logits. Otherwise the rows go through the
    head ``chunk_tokens`` at a time under activation checkpointing: backward recomputes
    each chunk's logits instead of keeping all of them.

    Args:
        hidden: final hidden states. [batch, seq, hidden]
        lm_head: the output layer (tied to the word embeddings).
        labels: aligned targets, -100 = ignored. [batch, seq]
        label_allowed: per labelled token, the token ids its softmax is restricted to
            (``recsysllm.item_loss.restrict_logits``; takes the chunked path). [labelled, K]
        chunk_tokens: rows per chunk on the CPU path (default ``LOSS_CHUNK_TOKENS``).

    Returns:
        A 0-dim fp32 tensor (0 with a gradient path when nothing is labelled).
    """
    selected = labels != -100
    hidden = hidden[selected]  # [labelled, hidden]
    targets = labels[selected]  # [labelled]
    fused = _liger_fused_linear_cross_entropy() if label_allowed is None else None
    # A ZeRO-3 partitioned weight (ds_numel) is gathered only inside lm_head's own
    # forward, which the fused kernel bypasses: it takes the chunked path.
    if fused is not None and hidden.is_cuda and not hasattr(lm_head.weight, "ds_numel"):
        weight = lm_head.weight
        # The kernel wants one dtype: under autocast (fp32 weights, bf16 activations)
        # it runs in the weight's dtype, outside autocast.
        with torch.autocast(device_type="cuda", enabled=False):
            return fused(weight, hidden.to(weight.dtype), targets).float()
    chunk_tokens = chunk_tokens or LOSS_CHUNK_TOKENS
    if label_allowed is not None and label_allowed.shape[0] != len(targets):
        raise ValueError(
            f"label_allowed has {label_allowed.shape[0]} rows for {len(targets)} labelled "
            "tokens (one row per labels != -100, row-major)"
        )
    total = hidden.sum().float() * 0.0
    for start in range(0, len(targets), chunk_tokens):
        total = total + checkpoint(
            _summed_cross_entropy,
            lm_head,
            hidden[start : start + chunk_tokens],
            targets[start : start + chunk_tokens],
            None if label_allowed is None else label_allowed[start : start + chunk_tokens],
            use_reentrant=False,
        )
    return total


def _summed_cross_entropy(
    lm_head: nn.Linear,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    logits = lm_head(hidden).float()
    if allowed is not None:
        logits = restrict_logits(logits, allowed)
    return F.cross_entropy(logits, targets, reduction="sum")


@functools.cache
def _liger_fused_linear_cross_entropy() -> nn.Module | None:
    """Liger-Kernel's fused linear cross-entropy (summed), or None when not installed."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    # fp32 accumulation of the weight gradient (a trained, tied head) across chunks.
    return LigerFusedLinearCrossEntropyLoss(reduction="sum", accum_dtype=torch.float32)


def intervals_to_mask(intervals: torch.Tensor) -> torch.Tensor:
    """[batch, 2, seq] key intervals -> the dense bool mask [batch, 1, seq, seq]."""
    keys = torch.arange(intervals.shape[-1], device=intervals.device)
    start, end = intervals[:, 0, :, None], intervals[:, 1, :, None]  # [batch, seq, 1]
    return ((keys >= start) & (keys < end))[:, None]


def interval_block_mask(intervals: torch.Tensor, block_size: int = FLEX_BLOCK_SIZE) -> BlockMask:
    """FlexAttention BlockMask of "query i sees keys [start_i, end_i)", exactly.

    Each (query tile, key tile) is classified from the visible-cell count of the tile,
    summed over its queries as interval overlaps: O(seq x tiles) memory, never the
    dense [batch, seq, seq] mask. Tiles with no visible cell are skipped by the
    kernel, full tiles skip the mask function, partial tiles evaluate it per cell.

    Args:
        intervals: [batch, 2, seq] long; row 0 start, row 1 end (exclusive).
        block_size: tile size of the block mask.
    """
    batch, _, length = intervals.shape
    tiles = -(-length // block_size)
    padded = tiles * block_size
    # Padding queries past `length` see nothing: the kernels may evaluate them.
    start, end = F.pad(intervals, (0, padded - length)).unbind(1)  # [batch, padded]
    edges = (torch.arange(tiles + 1, device=intervals.device) * block_size).clamp(max=length)
    tile_start, tile_end = edges[:-1], edges[1:]  # [tiles]
    # Visible keys of each query inside each key tile, summed per query tile.
    overlap = torch.minimum(end[..., None], tile_end) - torch.maximum(start[..., None], tile_start)
    counts = overlap.clamp(min=0).view(batch, tiles, block_size, tiles).sum(2)
    # As torch's create_block_mask: a tile cut by the sequence end is never full.
    full = counts == block_size * block_size  # [batch, query tiles, key tiles]
    partial = (counts > 0) & ~full

    def ordered(tile_flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Per query tile: how many key tiles, and their indices first (ascending).
        number = tile_flags.sum(-1, dtype=torch.int32)[:, None]  # [batch, 1, query tiles]
        order = torch.argsort((~tile_flags).to(torch.int8), dim=-1, stable=True)
        return number, order.to(torch.int32)[:, None]  # [batch, 1, query tiles, key tiles]

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        return (k >= start[b, q]) & (k < end[b, q])

    kv_number, kv_indices = ordered(partial)
    full_number, full_indices = ordered(full)
    return BlockMask.from_kv_blocks(
        kv_number,
        kv_indices,
        full_number,
        full_indices,
        BLOCK_SIZE=block_size,
        mask_mod=mask_mod,
        seq_lengths=(length, length),
    )


@functools.cache
def _compiled_flex_attention():
    """flex_attention compiled once per process: eager FlexAttention materialises the
    scores, compiled it runs the fused block-sparse kernel."""
    return torch.compile(flex_attention, dynamic=False)


def _attention_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask [batch, 1, query, key] -> additive bias [batch, 1, query, key] in ``dtype``."""
    bias = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
    return bias.masked_fill_(~attention_mask, MASKED_SCORE_BIAS)


def _check_inputs(
    input_ids: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    past_length: int,
    attention_intervals: torch.Tensor | None = None,
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
    if attention_intervals is not None:
        if attention_mask is not None:
            raise ValueError("pass attention_mask or attention_intervals, not both")
        if past_length:
            raise ValueError(
                "attention_intervals describe keys of this call only: use attention_mask "
                "with a KV cache"
            )
        if attention_intervals.dtype != torch.long or tuple(attention_intervals.shape) != (
            batch,
            2,
            seq,
        ):
            raise ValueError(
                f"attention_intervals must be a long tensor of shape [batch, 2, seq] = "
                f"{(batch, 2, seq)}, got {attention_intervals.dtype} "
                f"{tuple(attention_intervals.shape)}"
            )
        return
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
