"""CUDA checks (``pytest -m gpu`` on a GPU machine; skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

from recsysllm.modeling import GLMConfig, GLMForConditionalGeneration
from recsysllm.modeling.modeling_glm import TRAINING_PAD_MULTIPLE

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _model(dtype: torch.dtype) -> GLMForConditionalGeneration:
    config = GLMConfig(
        vocab_size=512,
        hidden_size=256,
        num_layers=2,
        num_attention_heads=4,
        max_sequence_length=256,
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return GLMForConditionalGeneration(config).to("cuda", dtype)


def _part_a_b_inputs(batch: int, length: int, part_a: int, padded: int):
    """Part A bidirectional, Part B causal, the last ``padded`` positions padding."""
    input_ids = torch.randint(0, 512, (batch, length), device="cuda")
    inter = torch.arange(length, device="cuda").clamp(max=part_a - 1)
    intra = (torch.arange(length, device="cuda") - part_a + 2).clamp(min=0)
    position_ids = torch.stack([inter, intra]).expand(batch, 2, length).contiguous()
    query = torch.arange(length, device="cuda")[:, None]
    key = torch.arange(length, device="cuda")[None, :]
    mask = (key < part_a) | ((query >= part_a) & (key <= query))
    real = torch.arange(length, device="cuda") < length - padded
    mask = mask & real[None, :] & real[:, None]
    return input_ids, position_ids, mask.expand(batch, 1, length, length).contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_training_and_inference_kernels_agree_and_stay_finite(dtype):
    """The training-mode backends (cuDNN allowed) and inference backends give the same
    outputs, padding rows stay finite, and backward runs, in every dtype."""
    model = _model(dtype)
    inputs = _part_a_b_inputs(batch=3, length=2 * TRAINING_PAD_MULTIPLE, part_a=70, padded=9)
    model.eval()
    with torch.no_grad():
        inference = model(*inputs).logits.float()
    model.train()  # dropout is 0: only the kernel choice differs
    labels = torch.where(inputs[2][:, 0].diagonal(dim1=1, dim2=2), inputs[0], -100)
    output = model(*inputs, labels=labels)
    output.loss.backward()
    tolerance = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}[dtype]
    assert torch.isfinite(output.logits).all()
    torch.testing.assert_close(output.logits.float(), inference, atol=tolerance, rtol=tolerance)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_kv_cache_matches_full_forward_on_cuda():
    model = _model(torch.float32).eval()
    input_ids, position_ids, mask = _part_a_b_inputs(batch=2, length=40, part_a=30, padded=0)
    with torch.no_grad():
        full = model(input_ids, position_ids, mask).logits
        prefix = model(
            input_ids[:, :30], position_ids[:, :, :30], mask[:, :, :30, :30], use_cache=True
        )
        cache, steps = prefix.cache, []
        for i in range(30, 40):
            step = model(
                input_ids[:, i : i + 1],
                position_ids[:, :, i : i + 1],
                mask[:, :, i : i + 1, : i + 1],
                cache=cache,
                use_cache=True,
            )
            steps.append(step.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 30:], atol=1e-4, rtol=1e-4)
