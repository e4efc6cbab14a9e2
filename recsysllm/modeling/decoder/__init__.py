"""The decoder backbone family: transformers' Llama, Qwen2/Qwen3 and GLM-4 classes under
RecSysLLM's forward contract (see :mod:`recsysllm.modeling.decoder.modeling_decoder`)."""

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

__all__ = [
    "BLOCK_POSITIONS_KEY",
    "FAMILIES",
    "TRAINING_PAD_MULTIPLE",
    "DecoderFamily",
    "build_decoder",
    "decoder_fingerprint",
    "default_lora_targets",
    "family_of",
    "is_decoder_checkpoint",
    "load_decoder_checkpoint",
    "lora_modules_to_save",
    "wrap_pretrained",
]
