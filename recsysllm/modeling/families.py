"""Backbone families: the one place that maps a family name to the module that owns it.

A config chooses a family with ``model.family`` (``glm`` | ``decoder``) or leaves it null
to detect it from the checkpoint directory: a ``config.json`` whose ``model_type`` is a
transformers decoder (llama, qwen2, qwen3, glm, glm4) is ``decoder``; anything else
(``recsysllm_glm``, THUDM layouts) is the default family, ``glm``.

Each family is a module (:mod:`recsysllm.modeling.glm`, :mod:`recsysllm.modeling.decoder`)
with the same names, which pipeline, training, config, checkpoint and tokenization code
call instead of naming a family:

- ``NAME``, ``TRAINING_PAD_MULTIPLE`` (training batch widths are padded to a multiple);
- ``load_checkpoint(path, torch_dtype=None)`` -> a model satisfying
  :class:`recsysllm.modeling.protocol.RecSysCausalLM`; ``owns_model(model)``;
- ``from_scratch_fields()``, ``build_from_scratch(fields, vocab_size, dtype)``;
  ``set_attention_implementation(model, name)``;
- ``load_tokenizer(path, saved=False)`` (the special-token layout is the tokenizer's
  ``special_tokens``), ``train_tokenizer(texts, out_dir, vocab_size)``;
- ``prepare_embeddings(model, tokenizer, where)`` -> ids of token rows the tokenizer
  added (trained beside LoRA, saved in the adapter);
- ``lora_targets(model)`` (``lora.target_modules: null``), ``modules_to_save(model)``;
- ``fingerprint(model)``: sha256 of the base weights, the same before and after LoRA.
  The non-default families also have ``is_checkpoint(path)`` and ``is_tokenizer_dir(path)``.

Example:
    >>> backbone = get_backbone(resolve_family(None, "data/models/smollm2-135m"))  # doctest: +SKIP
    >>> model = backbone.load_checkpoint("data/models/smollm2-135m")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

from recsysllm.modeling import decoder, glm

FAMILIES: dict[str, ModuleType] = {"glm": glm, "decoder": decoder}
FAMILY_NAMES = tuple(FAMILIES)
# Takes every directory no other family claims (THUDM layouts carry no model_type).
DEFAULT_FAMILY = "glm"


def get_backbone(name: str) -> ModuleType:
    """The module of family ``name``."""
    if name not in FAMILIES:
        raise ValueError(f"model family {name!r} not in {FAMILY_NAMES}")
    return FAMILIES[name]


def detect_family(path: str | os.PathLike) -> str:
    """The family whose ``is_checkpoint`` claims ``path``, else the default family."""
    claimed = (
        name
        for name, family in FAMILIES.items()
        if name != DEFAULT_FAMILY and family.is_checkpoint(path)
    )
    return next(claimed, DEFAULT_FAMILY)


def resolve_family(family: str | None, path: str | os.PathLike | None) -> str:
    """The configured family, or the one detected from ``path`` (the default without a path)."""
    if family is not None:
        get_backbone(family)  # validates the name
        return family
    return detect_family(path) if path is not None and Path(path).is_dir() else DEFAULT_FAMILY


def family_of_model(model: Any) -> str:
    """The family of a built model (PEFT-wrapped or not)."""
    for name, family in FAMILIES.items():
        if family.owns_model(model):
            return name
    raise ValueError(
        f"{type(model).__name__} (model_type {getattr(model.config, 'model_type', None)!r}) "
        f"belongs to no backbone family {FAMILY_NAMES}"
    )


def family_of_tokenizer_dir(path: str | os.PathLike) -> str:
    """The family whose ``is_tokenizer_dir`` claims ``path``, else the default family."""
    claimed = (
        name
        for name, family in FAMILIES.items()
        if name != DEFAULT_FAMILY and family.is_tokenizer_dir(path)
    )
    return next(claimed, DEFAULT_FAMILY)


def model_fingerprint(model: Any) -> str:
    """sha256 of ``model``'s architecture and base weights, by its family's rule."""
    return get_backbone(family_of_model(model)).fingerprint(model)
