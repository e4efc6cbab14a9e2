"""The GLM family: RecSysLLM's GLM (``recsysllm_glm``) and THUDM's checkpoints.

Everything the pipeline needs from a backbone family, reached through
``recsysllm.modeling.families.FAMILIES["glm"]`` (the decoder family,
:mod:`recsysllm.modeling.decoder`, has the same names): config fields of a
from-scratch model and its builder, checkpoint loader, tokenizer loader and trainer,
special-token layout (the tokenizer's ``special_tokens``), default LoRA targets,
training pad multiple and fingerprint. GLM is the default family: it takes every
checkpoint and tokenizer directory no other family claims (THUDM layouts have no
``model_type`` to detect). The model, config and THUDM loader files
(``modeling/modeling_glm.py``, ``configuration_glm.py``, ``checkpoint.py``) stay where
transformers' Auto classes and older imports find them.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from recsysllm.modeling.checkpoint import check_vocab_compatible, load_glm_checkpoint
from recsysllm.modeling.configuration_glm import GLMConfig
from recsysllm.modeling.glm.tokenization import (
    GLMTokenizer,
    load_saved_tokenizer,
    train_sentencepiece_tokenizer,
)
from recsysllm.modeling.modeling_glm import TRAINING_PAD_MULTIPLE, GLMForConditionalGeneration

NAME = "glm"
LORA_TARGETS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
# GLMConfig fields that change what the weights mean. Dropouts, dtype and library versions
# do not, so a base model loaded in bf16 with dropout 0 keeps its fingerprint.
_ARCHITECTURE_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_attention_heads",
    "max_sequence_length",
    "layernorm_epsilon",
    "gelu_approximate",
)

__all__ = [
    "LORA_TARGETS",
    "NAME",
    "TRAINING_PAD_MULTIPLE",
    "build_from_scratch",
    "fingerprint",
    "from_scratch_fields",
    "load_checkpoint",
    "load_tokenizer",
    "lora_targets",
    "modules_to_save",
    "owns_model",
    "prepare_embeddings",
    "set_attention_implementation",
    "train_tokenizer",
]


def owns_model(model: Any) -> bool:
    """Whether ``model`` (PEFT-wrapped or not) is a GLM."""
    return getattr(model.config, "model_type", None) == GLMConfig.model_type


def load_checkpoint(path: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> Any:
    """A THUDM or converted GLM directory as ``GLMForConditionalGeneration``."""
    return load_glm_checkpoint(path, torch_dtype=torch_dtype)


def from_scratch_fields() -> tuple[str, ...]:
    """Keys ``model.from_scratch`` accepts: the architecture fields of GLMConfig."""
    return tuple(GLMConfig.__annotations__)


def build_from_scratch(fields: dict[str, Any], vocab_size: int, dtype: torch.dtype) -> Any:
    """A randomly initialised GLM (seed the global torch RNG first)."""
    config = GLMConfig(**{"vocab_size": vocab_size, **fields})
    return GLMForConditionalGeneration(config).to(dtype)


def set_attention_implementation(model: Any, name: str) -> None:
    """``sdpa`` | ``flex`` for training; a runtime choice, not part of the fingerprint."""
    model.config.attention_implementation = name


def load_tokenizer(path: str | os.PathLike, saved: bool = False) -> GLMTokenizer:
    """The GLM tokenizer in ``path``; ``saved``: only a complete recsysllm save (see
    :func:`recsysllm.modeling.glm.tokenization.load_saved_tokenizer`)."""
    return load_saved_tokenizer(path) if saved else GLMTokenizer.from_pretrained(path)


def train_tokenizer(texts: Any, out_dir: str | os.PathLike, vocab_size: int) -> GLMTokenizer:
    """A sentencepiece tokenizer with GLM's specials, trained on ``texts`` (from-scratch models)."""
    return train_sentencepiece_tokenizer(texts, out_dir, vocab_size=vocab_size)


def prepare_embeddings(model: Any, tokenizer: GLMTokenizer, where: str) -> list[int]:
    """Checks the embedding covers the tokenizer; GLM tokenizers add no tokens, so no new rows."""
    rows = model.get_input_embeddings().weight.shape[0]
    check_vocab_compatible(rows, tokenizer.vocab_size, where=where)
    return []


def lora_targets(model: Any) -> list[str]:
    """GLM's default LoRA targets: attention and MLP linears."""
    return list(LORA_TARGETS)


def modules_to_save(model: Any) -> list[str]:
    """Nothing trains fully beside LoRA in a GLM."""
    return []


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a GLM's architecture and base weights (``checkpoint_meta.tensors_fingerprint``).

    Hashes the architecture fields of ``model.config``, the name and shape of every base
    parameter and a strided sample of each. LoRA parameters are skipped and PEFT's and
    the runtime ``glm.`` prefixes mapped back, so the value is the same before and after
    LoRA. Call it before DeepSpeed ZeRO-3 partitions the weights.
    """
    from recsysllm.checkpoint_meta import tensors_fingerprint

    config = model.config.to_dict()
    arch = {key: config[key] for key in _ARCHITECTURE_KEYS if key in config}
    tensors: dict[str, torch.Tensor] = {}
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            continue
        name = name.removeprefix("base_model.model.").removeprefix("glm.")
        tensors[name.replace(".base_layer.", ".")] = parameter
    return tensors_fingerprint(arch, tensors)
