"""The forward contract every backbone family satisfies (docs/ARCHITECTURE.md, "Model").

Collator, generation, training and evaluation only ever call a model through this
signature, so any class that satisfies :class:`RecSysCausalLM` plugs in:
``GLMForConditionalGeneration`` (``recsysllm.modeling``) and the decoder family's
``RecSys*ForCausalLM`` classes (``recsysllm.modeling.decoder``).

Example:
    >>> from recsysllm.modeling import GLMConfig, GLMForConditionalGeneration
    >>> model = GLMForConditionalGeneration(GLMConfig(vocab_size=64, hidden_size=32,
    ...     num_layers=1, num_attention_heads=4, max_sequence_length=16))
    >>> isinstance(model, RecSysCausalLM)
    True
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast


@runtime_checkable
class RecSysCausalLM(Protocol):
    """A causal LM with RecSysLLM's inputs.

    ``forward`` arguments:

    - ``input_ids``: [B, L] long.
    - ``position_ids``: [B, 2, L] long; row 0 the inter position (the backbone's own
      position: GLM's position embedding, a decoder's rotary position), row 1 the intra
      (block) position.
    - ``attention_mask``: 4-D bool [B, 1, L, K], True = may attend, K = cached + L.
      Required: Part A bidirectional / Part B causal is the caller's mask, never an
      implicit default. Fully masked (padding) rows give finite outputs.
    - ``labels``: [B, L] aligned with the inputs (not shifted): ``labels[b, i]`` is the
      token predicted from position i; -100 ignored; loss = mean over labelled tokens
      (0 when there are none).
    - ``past_key_values``: a transformers ``Cache`` (``DynamicCache``), updated in place;
      ``use_cache=True`` returns it (a new one when none was given).
    - ``logits_to_keep``: 0 = logits for every position, n > 0 = for the last n only.

    Returns ``CausalLMOutputWithPast(loss, logits [B, L or n, V], past_key_values)``
    (transformers 5.24 names the field ``cache``; ``past_key_values`` reads it too).
    """

    config: Any

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast: ...

    def get_input_embeddings(self) -> torch.nn.Module: ...
