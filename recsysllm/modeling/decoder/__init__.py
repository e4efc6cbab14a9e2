"""The decoder backbone family: transformers' Llama, Qwen2/Qwen3 and GLM-4 classes under
RecSysLLM's forward contract (see :mod:`recsysllm.modeling.decoder.modeling_decoder`).

Reached through ``recsysllm.modeling.families.FAMILIES["decoder"]``, with the same names
as the GLM family (:mod:`recsysllm.modeling.glm`): checkpoint and tokenizer loaders,
default LoRA targets, modules trained beside LoRA, token rows added for special roles,
training pad multiple and fingerprint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from recsysllm.modeling.decoder.modeling_decoder import (
    BLOCK_POSITIONS_KEY,
    FAMILIES,
    TRAINING_PAD_MULTIPLE,
    DecoderFamily,
    build_decoder,
    decoder_fingerprint,
    default_lora_targets,
    family_of,
    is_decoder_checkpoint,
    load_decoder_checkpoint,
    lora_modules_to_save,
    wrap_pretrained,
)
from recsysllm.modeling.decoder.tokenization import (
    ROLES_FILE,
    HFTokenizer,
    is_hf_tokenizer_dir,
    resize_model_embeddings,
)

NAME = "decoder"

__all__ = [
    "BLOCK_POSITIONS_KEY",
    "FAMILIES",
    "NAME",
    "TRAINING_PAD_MULTIPLE",
    "DecoderFamily",
    "HFTokenizer",
    "build_decoder",
    "build_from_scratch",
    "decoder_fingerprint",
    "default_lora_targets",
    "family_of",
    "fingerprint",
    "from_scratch_fields",
    "is_checkpoint",
    "is_decoder_checkpoint",
    "is_tokenizer_dir",
    "load_checkpoint",
    "load_decoder_checkpoint",
    "load_tokenizer",
    "lora_modules_to_save",
    "lora_targets",
    "modules_to_save",
    "owns_model",
    "prepare_embeddings",
    "set_attention_implementation",
    "train_tokenizer",
    "wrap_pretrained",
]

is_checkpoint = is_decoder_checkpoint
is_tokenizer_dir = is_hf_tokenizer_dir
lora_targets = default_lora_targets
modules_to_save = lora_modules_to_save
fingerprint = decoder_fingerprint


def owns_model(model: Any) -> bool:
    """Whether ``model`` (PEFT-wrapped or not) is one of the supported transformers decoders."""
    return getattr(model.config, "model_type", None) in FAMILIES


def load_checkpoint(path: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> Any:
    """A transformers checkpoint directory as its ``RecSys*ForCausalLM``."""
    return load_decoder_checkpoint(path, torch_dtype=torch_dtype)


def from_scratch_fields() -> tuple[str, ...]:
    """None: decoders start from a pretrained (or saved random) transformers directory."""
    return ()


def build_from_scratch(fields: dict[str, Any], vocab_size: int, dtype: torch.dtype) -> Any:
    raise ValueError(
        "config field model.from_scratch: the decoder family starts from a transformers "
        "directory (model.base_model)"
    )


def set_attention_implementation(model: Any, name: str) -> None:
    """Decoders run SDPA (the 4-D bias); FlexAttention is GLM's."""
    if name != "sdpa":
        raise ValueError(
            f"config field model.attention_implementation: {name!r} is not available for "
            "decoders (sdpa only)"
        )


def load_tokenizer(path: str | os.PathLike, saved: bool = False) -> HFTokenizer:
    """The fast tokenizer in ``path``; ``saved``: a recsysllm save, refused when incomplete."""
    if saved and not (Path(path) / ROLES_FILE).is_file():
        raise ValueError(
            f"{Path(path) / ROLES_FILE}: missing; {str(path)!r} is an incomplete "
            "tokenizer save (interrupted run?)"
        )
    return HFTokenizer.from_pretrained(path)


def train_tokenizer(texts: Any, out_dir: str | os.PathLike, vocab_size: int) -> HFTokenizer:
    raise ValueError(
        "config field tokenizer.sentencepiece_vocab_size: decoders use their own tokenizer"
    )


def prepare_embeddings(model: Any, tokenizer: HFTokenizer, where: str) -> list[int]:
    """Gives every tokenizer id an embedding row; returns the ids of the added role tokens.

    The rows of added roles (a vocabulary without reserved tokens, see
    :mod:`recsysllm.modeling.decoder.tokenization`) carry no pretrained meaning: the
    caller trains them (LoRA: PEFT's ``trainable_token_indices``) and saves them with
    the adapter. Rows the resize appends start at the mean of the pretrained rows, a
    deterministic value, so a reload rebuilds the same model.
    """
    resize_model_embeddings(model, tokenizer)
    return tokenizer.added_role_ids
