"""Backbone families: the one place that knows which model, tokenizer and LoRA layout to use.

A config chooses a family with ``model.family`` (``glm`` | ``decoder``) or leaves it null
to detect it from the checkpoint directory: a ``config.json`` whose ``model_type`` is a
transformers decoder (llama, qwen2, qwen3, glm, glm4) is ``decoder``; anything else
(``recsysllm_glm``, THUDM layouts) is ``glm``. Pipeline code asks :func:`get_backbone`
instead of naming a family.

Example:
    >>> backbone = get_backbone(resolve_family(None, "data/models/smollm2-135m"))  # doctest: +SKIP
    >>> model = backbone.load_checkpoint("data/models/smollm2-135m")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FAMILY_NAMES = ("glm", "decoder")
GLM_LORA_TARGETS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")


@dataclass(frozen=True)
class Backbone:
    """What the pipeline needs from one family.

    Attributes:
        name: "glm" | "decoder".
        load_checkpoint: ``(path, torch_dtype=None) -> model`` satisfying
            ``recsysllm.modeling.protocol.RecSysCausalLM``.
        load_tokenizer: ``path -> tokenizer`` with GLMTokenizer's interface.
        lora_targets: ``model -> module names`` (the family's default LoRA targets).
        modules_to_save: ``model -> module names`` trained fully beside LoRA and saved
            in the adapter (the decoders' block-position embedding).
        pad_multiple: training batch widths are padded to a multiple of this.
        fingerprint: ``model -> sha256`` of the base weights (same before/after LoRA).
    """

    name: str
    load_checkpoint: Callable[..., Any]
    load_tokenizer: Callable[[str | os.PathLike], Any]
    lora_targets: Callable[[Any], list[str]]
    modules_to_save: Callable[[Any], list[str]]
    pad_multiple: int
    fingerprint: Callable[[torch.nn.Module], str]


def detect_family(path: str | os.PathLike) -> str:
    """ "decoder" when ``path/config.json`` names a supported transformers decoder, else "glm"."""
    from recsysllm.modeling.decoder import is_decoder_checkpoint

    return "decoder" if is_decoder_checkpoint(path) else "glm"


def resolve_family(family: str | None, path: str | os.PathLike | None) -> str:
    """The configured family, or the one detected from ``path`` (glm without a path)."""
    if family is not None:
        if family not in FAMILY_NAMES:
            raise ValueError(f"model family {family!r} not in {FAMILY_NAMES}")
        return family
    return detect_family(path) if path is not None and Path(path).is_dir() else "glm"


def family_of_model(model: Any) -> str:
    """The family of a built model (PEFT-wrapped or not)."""
    from recsysllm.modeling.decoder import FAMILIES

    return "decoder" if getattr(model.config, "model_type", None) in FAMILIES else "glm"


def get_backbone(name: str) -> Backbone:
    """The :class:`Backbone` of family ``name``."""
    if name == "glm":
        from recsysllm.checkpoint_meta import model_fingerprint
        from recsysllm.modeling.checkpoint import load_glm_checkpoint
        from recsysllm.modeling.modeling_glm import TRAINING_PAD_MULTIPLE
        from recsysllm.tokenization import GLMTokenizer

        return Backbone(
            name="glm",
            load_checkpoint=load_glm_checkpoint,
            load_tokenizer=GLMTokenizer.from_pretrained,
            lora_targets=lambda model: list(GLM_LORA_TARGETS),
            modules_to_save=lambda model: [],
            pad_multiple=TRAINING_PAD_MULTIPLE,
            fingerprint=model_fingerprint,
        )
    if name == "decoder":
        from recsysllm.modeling import decoder
        from recsysllm.tokenization_hf import HFTokenizer

        return Backbone(
            name="decoder",
            load_checkpoint=decoder.load_decoder_checkpoint,
            load_tokenizer=HFTokenizer.from_pretrained,
            lora_targets=decoder.default_lora_targets,
            modules_to_save=decoder.lora_modules_to_save,
            pad_multiple=decoder.TRAINING_PAD_MULTIPLE,
            fingerprint=decoder.decoder_fingerprint,
        )
    raise ValueError(f"model family {name!r} not in {FAMILY_NAMES}")
