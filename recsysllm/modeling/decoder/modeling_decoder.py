"""Modern decoders (Llama, Qwen2/Qwen3, GLM-4) under RecSysLLM's forward contract.

The models are transformers' own classes (``LlamaForCausalLM``, ``Qwen3ForCausalLM``,
``GlmForCausalLM``, ...); nothing of them is re-implemented. Each family gets a thin
subclass, ``RecSys<Base>`` (e.g. ``RecSysLlamaForCausalLM``), that adds one module and
overrides ``forward`` to take the contract of :class:`recsysllm.modeling.protocol.
RecSysCausalLM`:

- ``position_ids`` [B, 2, L]: row 0 (inter) becomes the model's rotary positions; row 1
  (intra, GLM's block position) indexes ``block_position_embeddings``, a learned
  embedding added to the input (word) embeddings, exactly as GLM adds its block-position
  embedding. It is **zero-initialised**, so at initialisation the model computes
  ``embed(ids) + 0``: the pretrained model is left exactly intact at every intra
  position, and logits equal the unmodified transformers model's bit for bit.
- ``attention_mask`` 4-D bool [B, 1, L, K] (True = attend): turned into an additive
  float bias with a finite masked value (``modeling_glm.MASKED_SCORE_BIAS``, as GLM),
  which transformers 5.24's ``create_causal_mask`` passes through unchanged ("already
  4D"), to SDPA or eager attention. A fully masked padding row softmaxes over equal
  finite scores and stays finite (a bool mask would give NaN there).
- ``labels`` unshifted (-100 ignored; summed float32 cross-entropy over labelled tokens
  divided by their count or by Trainer's ``num_items_in_batch``); the base class's
  shifting loss is never used. ``return_logits=False`` runs the head on labelled
  positions only, as the GLM family does.
- ``past_key_values``: a transformers ``Cache``. transformers 5.24 renamed the models'
  argument to ``cache`` (``past_key_values`` deprecated until 5.40); we take
  ``past_key_values`` as GLM and ``recsysllm.generation`` do (``cache`` is accepted
  too) and pass ``cache=`` to the base class.

Why an added embedding and not a second rotary (measured on SmolLM2-135M, perplexity on
2,048 tokens of English with block position 0 everywhere, issue 11): unmodified model
18.20; ChatGLM-6B's literal 2-D RoPE (first half of each head's dims rotated by the
position, second half by the block position) 162.1, because it re-pairs the pretrained
rotary dimensions; keeping the pretrained pairs (i, i + d/2) and giving the
low-frequency pairs to the block position 18.29 (those pairs no longer see the
position); the zero-initialised added embedding 18.20 exactly. Only the last keeps the
pretrained model intact, so it is the one offered. It is trained alongside LoRA
(:func:`lora_modules_to_save`) and saved in the adapter.

Example:
    >>> from transformers import LlamaConfig
    >>> config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
    >>> model = build_decoder(config).eval()
    >>> ids = torch.tensor([[5, 6, 7]])
    >>> positions = torch.stack([torch.arange(3), torch.zeros(3, dtype=torch.long)])[None]
    >>> causal = torch.ones(3, 3, dtype=torch.bool).tril()[None, None]
    >>> model(ids, positions, causal).logits.shape
    torch.Size([1, 3, 64])
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    Glm4ForCausalLM,
    GlmForCausalLM,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
)
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from recsysllm.modeling.modeling_glm import (
    MASKED_SCORE_BIAS,
    _check_inputs,
    check_label_shape,
    labelled_cross_entropy,
    logits_cross_entropy,
    per_item_loss,
)

# Config attribute (saved in config.json) with the number of block-position rows.
BLOCK_POSITIONS_KEY = "recsysllm_block_positions"
# Default rows: intra positions run up to the longest Part B span + 1 (<= max_length).
DEFAULT_BLOCK_POSITIONS = 2049
# Width multiple the collator pads training batches to (SDPA sees few shapes).
TRAINING_PAD_MULTIPLE = 64
# Attention implementations that take an arbitrary additive 4-D mask.
_MASKABLE_ATTENTION = ("sdpa", "eager")
_IGNORED_KWARGS = frozenset({"return_dict", "output_attentions", "output_hidden_states"})

_LLAMA_STYLE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# transformers' GLM-4 fuses gate and up into one Linear.
_GLM4_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")


class BlockPositionEmbedding(nn.Embedding):
    """The learned intra (block) position embedding; its own type so init zeroes it."""


class _RecSysDecoderMixin:
    """Adds ``block_position_embeddings`` and the RecSysLLM forward to a transformers LM."""

    _keys_to_ignore_on_load_missing = [r"block_position_embeddings\.weight"]
    # Trainer passes num_items_in_batch (labelled tokens of the whole optimizer step), as
    # for the GLM family: the loss is summed cross-entropy / that count.
    accepts_loss_kwargs = True

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        rows = int(getattr(config, BLOCK_POSITIONS_KEY, None) or DEFAULT_BLOCK_POSITIONS)
        setattr(config, BLOCK_POSITIONS_KEY, rows)
        self.block_position_embeddings = BlockPositionEmbedding(rows, config.hidden_size)
        nn.init.zeros_(self.block_position_embeddings.weight)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, BlockPositionEmbedding):
            init.zeros_(module.weight)
        else:
            super()._init_weights(module)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        cache: Cache | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_logits: bool = True,
        label_allowed: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """The RecSysLLM forward contract (``recsysllm.modeling.protocol.RecSysCausalLM``).

        Args:
            input_ids: [batch, seq] token ids.
            position_ids: [batch, 2, seq]; row 0 rotary position (inter), row 1 block
                position (intra), < ``config.recsysllm_block_positions``.
            attention_mask: [batch, 1, seq, cached + seq] bool, True = may attend. Required.
            labels: [batch, seq] aligned with input_ids (not shifted); -100 is ignored.
            past_key_values: a transformers Cache from an earlier call (updated in place);
                ``cache`` is the same argument under transformers 5.24's name.
            use_cache: return the cache (a new DynamicCache if none was given).
            logits_to_keep: 0 = every position; n > 0 = the last n only. Not with labels.
            num_items_in_batch: divide the summed loss by this instead of this batch's
                labelled tokens (Trainer's count over the whole optimizer step).
            return_logits: False (with labels): no logits; the head and the loss run on
                the labelled positions only (``modeling_glm.labelled_cross_entropy``).
            label_allowed: [labelled tokens, K] restricted-softmax token ids per labelled
                token (``recsysllm.item_loss``; all -1 row: the whole vocabulary).
            **kwargs: Trainer/PEFT keywords that carry nothing here; others are an error.

        Returns:
            CausalLMOutputWithPast(loss, logits or None, cache): loss is the summed
            cross-entropy over labelled tokens divided by ``num_items_in_batch`` or by
            their count (0 if none).
        """
        _check_kwargs(type(self).__name__, kwargs)
        if past_key_values is not None and cache is not None and past_key_values is not cache:
            raise ValueError("pass the cache once, as past_key_values or as cache")
        cache = past_key_values if past_key_values is not None else cache
        past_length = cache.get_seq_length() if cache is not None else 0
        _check_inputs(input_ids, position_ids, attention_mask, past_length)
        implementation = self.config._attn_implementation
        if implementation not in _MASKABLE_ATTENTION:
            raise ValueError(
                f"attention implementation {implementation!r} cannot take RecSysLLM's 4-D "
                f"masks; load the model with attn_implementation in {_MASKABLE_ATTENTION}"
            )
        intra = position_ids[:, 1]
        rows = self.block_position_embeddings.num_embeddings
        if intra.numel() and (int(intra.max()) >= rows or int(intra.min()) < 0):
            raise ValueError(
                f"intra (block) positions span {int(intra.min())}..{int(intra.max())}, the "
                f"model has {rows} block-position rows (config.{BLOCK_POSITIONS_KEY}); build "
                "it with block_positions >= data.max_length + 1"
            )
        embeddings = self.get_input_embeddings()(input_ids)
        embeddings = embeddings + self.block_position_embeddings(intra).to(embeddings.dtype)
        bias = torch.zeros(attention_mask.shape, dtype=embeddings.dtype, device=embeddings.device)
        bias.masked_fill_(~attention_mask, MASKED_SCORE_BIAS)
        if logits_to_keep and labels is not None:
            raise ValueError("logits_to_keep cannot be combined with labels")
        if label_allowed is not None and labels is None:
            raise ValueError("label_allowed needs labels")
        if not return_logits:
            if labels is None:
                raise ValueError("return_logits=False needs labels (the loss is all it returns)")
            check_label_shape(labels, input_ids.shape)
            hidden = self.model(
                inputs_embeds=embeddings,
                attention_mask=bias,
                position_ids=position_ids[:, 0],
                cache=cache,
                use_cache=use_cache,
            )
            summed = labelled_cross_entropy(
                hidden.last_hidden_state, self.lm_head, labels, label_allowed
            )
            return CausalLMOutputWithPast(
                loss=per_item_loss(summed, labels, num_items_in_batch),
                logits=None,
                cache=hidden.cache if use_cache else None,
            )
        outputs = super().forward(
            inputs_embeds=embeddings,
            attention_mask=bias,
            position_ids=position_ids[:, 0],
            cache=cache,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
        )
        loss = None
        if labels is not None:
            check_label_shape(labels, input_ids.shape)
            summed = logits_cross_entropy(outputs.logits, labels, label_allowed)
            loss = per_item_loss(summed, labels, num_items_in_batch)
        return CausalLMOutputWithPast(
            loss=loss, logits=outputs.logits, cache=outputs.cache if use_cache else None
        )


def _check_kwargs(where: str, kwargs: dict[str, object]) -> None:
    for name, value in kwargs.items():
        if name in _IGNORED_KWARGS or value is None:
            continue
        raise TypeError(f"{where}.forward got an unexpected argument {name!r}")


@dataclass(frozen=True)
class DecoderFamily:
    """One transformers model family.

    Attributes:
        model_type: ``config.model_type`` ("llama", "qwen3", "glm4", ...).
        base_class: transformers' causal-LM class.
        model_class: its RecSysLLM subclass.
        lora_targets: default LoRA target module names.
    """

    model_type: str
    base_class: type[PreTrainedModel]
    model_class: type[PreTrainedModel]
    lora_targets: tuple[str, ...]


def _family(base: type[PreTrainedModel], targets: tuple[str, ...]) -> DecoderFamily:
    model_class = type(f"RecSys{base.__name__}", (_RecSysDecoderMixin, base), {})
    model_class.__module__ = __name__
    model_class.__doc__ = f"transformers' {base.__name__} with RecSysLLM's forward contract."
    return DecoderFamily(base.config_class.model_type, base, model_class, targets)


FAMILIES: dict[str, DecoderFamily] = {
    family.model_type: family
    for family in (
        _family(LlamaForCausalLM, _LLAMA_STYLE_TARGETS),
        _family(Qwen2ForCausalLM, _LLAMA_STYLE_TARGETS),
        _family(Qwen3ForCausalLM, _LLAMA_STYLE_TARGETS),
        _family(GlmForCausalLM, _GLM4_TARGETS),
        _family(Glm4ForCausalLM, _GLM4_TARGETS),
    )
}
globals().update({family.model_class.__name__: family.model_class for family in FAMILIES.values()})


def family_of(config_or_type: PretrainedConfig | str) -> DecoderFamily:
    """The family of a transformers config (or of a ``model_type`` string)."""
    model_type = getattr(config_or_type, "model_type", config_or_type)
    if model_type not in FAMILIES:
        raise ValueError(
            f"model_type {model_type!r} is not a supported decoder; supported: {sorted(FAMILIES)}"
        )
    return FAMILIES[model_type]


def build_decoder(
    config: PretrainedConfig,
    block_positions: int | None = None,
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """A randomly initialised RecSys decoder of ``config`` (block embedding zero)."""
    if block_positions is not None:
        setattr(config, BLOCK_POSITIONS_KEY, block_positions)
    config._attn_implementation = attn_implementation
    return family_of(config).model_class(config)


def wrap_pretrained(model: PreTrainedModel, block_positions: int | None = None) -> PreTrainedModel:
    """Turns a loaded transformers model into its RecSys class, in place (no weight copy).

    The instance keeps every module, buffer and weight; it changes class to the family's
    ``RecSys*ForCausalLM`` and gains a zero block-position embedding. Returns the same
    object. Use it on models loaded by transformers itself (e.g. from a GGUF file).
    """
    config = model.config
    if block_positions is not None:
        setattr(config, BLOCK_POSITIONS_KEY, block_positions)
    family = family_of(config)
    if type(model) is not family.base_class:
        raise TypeError(f"expected a {family.base_class.__name__}, got {type(model).__name__}")
    rows = int(getattr(config, BLOCK_POSITIONS_KEY, None) or DEFAULT_BLOCK_POSITIONS)
    setattr(config, BLOCK_POSITIONS_KEY, rows)
    embedding = BlockPositionEmbedding(
        rows, config.hidden_size, device=model.device, dtype=model.dtype
    )
    nn.init.zeros_(embedding.weight)
    model.__class__ = family.model_class
    model.block_position_embeddings = embedding
    if config._attn_implementation not in _MASKABLE_ATTENTION:
        model.set_attn_implementation("sdpa")
    return model


def load_decoder_checkpoint(
    path: str | os.PathLike,
    torch_dtype: torch.dtype | None = None,
    block_positions: int | None = None,
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """Loads a transformers checkpoint directory (config.json + safetensors) as its RecSys class.

    A plain checkpoint (e.g. from ``recsysllm model fetch``) gets a zero block-position
    embedding; one saved by a RecSys model restores its trained one.

    Raises:
        FileNotFoundError: no config.json in ``path``.
        ValueError: an unsupported ``model_type`` (named with the file).
    """
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no such file (not a transformers checkpoint)")
    model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    try:
        family = family_of(model_type)
    except ValueError as error:
        raise ValueError(f"{config_path}: field 'model_type': {error}") from None
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if block_positions is not None:
        kwargs[BLOCK_POSITIONS_KEY] = block_positions
    return family.model_class.from_pretrained(path, **kwargs)


def is_decoder_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path/config.json`` names a supported decoder ``model_type`` (family detection)."""
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        return False
    try:
        return json.loads(config_path.read_text(encoding="utf-8")).get("model_type") in FAMILIES
    except json.JSONDecodeError:
        return False


def default_lora_targets(model: Any) -> list[str]:
    """The family's LoRA target module names."""
    return list(family_of(model.config).lora_targets)


def lora_modules_to_save(model: Any) -> list[str]:
    """Modules trained fully next to LoRA and saved in the adapter: the block embedding."""
    return ["block_position_embeddings"]


# Config fields that change what the weights mean (dtype, dropout, cache flags do not).
_ARCHITECTURE_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_parameters",
    "partial_rotary_factor",
    "tie_word_embeddings",
)
_FINGERPRINT_TENSORS = (
    "embed_tokens.weight",
    "layers.0.self_attn.q_proj.weight",
    "layers.0.mlp.down_proj.weight",
    "norm.weight",
)
_SAMPLES_PER_TENSOR = 512


def decoder_fingerprint(model: nn.Module) -> str:
    """sha256 of a decoder's architecture and base weights (like ``model_fingerprint``).

    Hashes the architecture fields of the config, every base parameter's name and shape,
    and 512 evenly spaced bf16-rounded values of four tensors. LoRA parameters and the
    block-position embedding (trained with LoRA, zero in a base model) are left out and
    PEFT's wrapper names mapped back, so the value is the same before and after LoRA.
    """
    digest = hashlib.sha256()
    config = model.config.to_dict()
    arch = {key: config.get(key) for key in _ARCHITECTURE_KEYS}
    digest.update(json.dumps(arch, sort_keys=True, default=str).encode())
    tensors: dict[str, torch.Tensor] = {}
    for name, parameter in model.named_parameters():
        if "lora_" in name or "block_position_embeddings" in name:
            continue
        name = name.removeprefix("base_model.model.").removeprefix("model.")
        tensors[name.replace(".base_layer.", ".")] = parameter
    for name in sorted(tensors):
        digest.update(f"{name}:{tuple(tensors[name].shape)};".encode())
    for name in _FINGERPRINT_TENSORS:
        if name not in tensors:
            raise KeyError(f"decoder_fingerprint: the model has no parameter {name!r}")
        flat = tensors[name].detach().reshape(-1)
        # integer spacing: a float32 linspace rounds past the end of tensors > 2**24 values
        steps = torch.arange(_SAMPLES_PER_TENSOR, device=flat.device)
        index = steps * (flat.numel() - 1) // (_SAMPLES_PER_TENSOR - 1)
        sample = flat[index].to(torch.bfloat16).view(torch.int16).cpu()
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()
