"""GLM config + model (transformers PreTrainedModel) and THUDM checkpoint loading/conversion.

Importing this package registers model type ``recsysllm_glm`` with AutoConfig,
AutoModel and AutoModelForCausalLM, so converted directories load with
``AutoModel.from_pretrained(out_dir)``.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from recsysllm.modeling.checkpoint import (
    check_vocab_compatible,
    convert_checkpoint,
    load_glm_checkpoint,
)
from recsysllm.modeling.configuration_glm import GLMConfig
from recsysllm.modeling.modeling_glm import GLMForConditionalGeneration, GLMModel

AutoConfig.register(GLMConfig.model_type, GLMConfig, exist_ok=True)
AutoModel.register(GLMConfig, GLMForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(GLMConfig, GLMForConditionalGeneration, exist_ok=True)

__all__ = [
    "GLMConfig",
    "GLMForConditionalGeneration",
    "GLMModel",
    "check_vocab_compatible",
    "convert_checkpoint",
    "load_glm_checkpoint",
]
