"""Training speed levers: equality with the plain path (issue 13).

- the head and loss on labelled positions only (chunked on CPU),
- FlexAttention with a block mask built from per-token attention intervals,
- selective activation checkpointing (every k-th block).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_collator import SPECIAL, _mixed_examples
from torch.nn.attention.flex_attention import create_block_mask, create_mask, flex_attention

from recsysllm.collator import BlankInfillingCollator
from recsysllm.modeling import GLMConfig, GLMForConditionalGeneration, modeling_glm
from recsysllm.packing import pack_rows


def packed_batch(seed: int = 5, count: int = 9, max_length: int = 96) -> dict[str, torch.Tensor]:
    """A real blank-infilling batch: several examples per row, Part A/B, padding."""
    examples = _mixed_examples(seed=seed, count=count)
    collator = BlankInfillingCollator(SPECIAL, max_length=max_length, seed=1)
    lengths = [collator.encode(e).length for e in examples]
    rows = pack_rows(lengths, max_length)
    return collator.collate_rows([[examples[i] for i in row] for row in rows])


def glm(vocab: int, layers: int = 2, seed: int = 0, **overrides) -> GLMForConditionalGeneration:
    config = GLMConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_layers=layers,
        num_attention_heads=4,
        max_sequence_length=128,
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
        **overrides,
    )
    torch.manual_seed(seed)
    return GLMForConditionalGeneration(config).train()


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ----------------------------------------------------------- logits only where labels


def test_labelled_only_loss_and_gradients_equal_the_full_logits_path(monkeypatch):
    batch = packed_batch()
    labelled = int((batch["labels"] != -100).sum())
    assert 0 < labelled < batch["labels"].numel() / 2  # Part B only: the point of the lever
    model = glm(vocab=int(batch["input_ids"].max()) + 1)

    reference = model(**batch)
    assert reference.logits is not None
    reference.loss.backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)

    # Chunks of 7 rows: several chunks, and a short last one.
    monkeypatch.setattr(modeling_glm, "LOSS_CHUNK_TOKENS", 7)
    head_rows: list[int] = []
    hook = model.lm_head.register_forward_hook(
        lambda module, args, out: head_rows.append(args[0].shape[0])
    )
    out = model(**batch, return_logits=False)
    out.loss.backward()
    hook.remove()
    assert out.logits is None
    torch.testing.assert_close(out.loss, reference.loss, rtol=1e-6, atol=1e-6)
    got = grads(model)
    assert set(got) == set(expected)
    for name, grad in got.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-7, msg=name)
    # The head saw labelled rows only, at most 7 at a time (forward, then the backward's
    # recomputation): never [tokens, vocab] logits.
    assert max(head_rows) <= 7
    assert sum(head_rows) == 2 * labelled


def test_labelled_only_loss_divides_by_num_items_in_batch():
    batch = packed_batch()
    model = glm(vocab=int(batch["input_ids"].max()) + 1).eval()
    labelled = int((batch["labels"] != -100).sum())
    with torch.no_grad():
        mean = model(**batch, return_logits=False).loss
        over_step = model(**batch, return_logits=False, num_items_in_batch=3 * labelled).loss
        as_tensor = model(
            **batch, return_logits=False, num_items_in_batch=torch.tensor(3 * labelled)
        ).loss
        nothing = model(
            **{**batch, "labels": torch.full_like(batch["labels"], -100)}, return_logits=False
        ).loss
    torch.testing.assert_close(over_step, mean / 3)
    torch.testing.assert_close(as_tensor, mean / 3)
    assert nothing.item() == 0.0


def test_return_logits_false_needs_labels():
    batch = packed_batch()
    model = glm(vocab=int(batch["input_ids"].max()) + 1)
    del batch["labels"]
    with pytest.raises(ValueError, match="return_logits=False needs labels"):
        model(**batch, return_logits=False)


# ----------------------------------------------------------- FlexAttention block mask


def interval_batch(seed: int = 5, count: int = 9, max_length: int = 96, pad: int | None = None):
    """The same packed rows laid out with a dense mask and with key intervals."""
    examples = _mixed_examples(seed=seed, count=count)
    dense = BlankInfillingCollator(SPECIAL, max_length=max_length, seed=1, pad_to_multiple_of=pad)
    intervals = BlankInfillingCollator(
        SPECIAL, max_length=max_length, seed=1, pad_to_multiple_of=pad, attention_layout="intervals"
    )
    lengths = [dense.encode(e).length for e in examples]
    rows = [[examples[i] for i in row] for row in pack_rows(lengths, max_length)]
    return dense.collate_rows(rows), intervals.collate_rows(rows)


def test_collator_intervals_describe_exactly_the_dense_mask():
    dense, intervals = interval_batch(pad=64)
    assert "attention_mask" not in intervals and "attention_intervals" not in dense
    for key in ("input_ids", "position_ids", "labels"):
        assert torch.equal(dense[key], intervals[key])
    mask = modeling_glm.intervals_to_mask(intervals["attention_intervals"])
    assert torch.equal(mask, dense["attention_mask"])
    with pytest.raises(ValueError, match="attention_layout"):
        BlankInfillingCollator(SPECIAL, max_length=32, attention_layout="dense")


@pytest.mark.parametrize("block_size", [16, 128])
def test_interval_block_mask_equals_torch_block_mask_of_the_dense_mask(block_size):
    # Rows of 200 wide: several examples per row, padding, a partial last tile at 16.
    dense, intervals = interval_batch(count=14, max_length=200)
    mask = dense["attention_mask"][:, 0]  # [rows, L, L]
    rows, length, _ = mask.shape
    ours = modeling_glm.interval_block_mask(intervals["attention_intervals"], block_size)
    reference = create_block_mask(
        lambda b, h, q, k: mask[b, q, k], rows, None, length, length, "cpu", block_size
    )
    for name in ("kv_num_blocks", "full_kv_num_blocks"):
        assert torch.equal(getattr(ours, name), getattr(reference, name)), name
    for number, ours_idx, ref_idx in (
        (ours.kv_num_blocks, ours.kv_indices, reference.kv_indices),
        (ours.full_kv_num_blocks, ours.full_kv_indices, reference.full_kv_indices),
    ):
        for index in np.ndindex(*number.shape):
            n = int(number[index])
            assert sorted(ours_idx[index][:n].tolist()) == sorted(ref_idx[index][:n].tolist())
    # Cell by cell, through the partial tiles' mask function, it is the dense mask.
    assert torch.equal(create_mask(ours.mask_mod, rows, 1, length, length, "cpu")[:, 0], mask)
    # Fully masked tiles exist (across examples, padding): FlexAttention skips them.
    tiles = -(-length // block_size)
    visited = ours.kv_num_blocks + ours.full_kv_num_blocks
    assert int(visited.sum()) < rows * tiles * tiles


def test_flex_attention_forward_equals_sdpa_on_packed_prefix_lm_rows(monkeypatch):
    dense, intervals = interval_batch(count=14, max_length=200, pad=64)
    vocab = int(dense["input_ids"].max()) + 1
    sdpa = glm(vocab).eval()
    flex = glm(vocab, attention_implementation="flex").eval()
    flex.load_state_dict(sdpa.state_dict())
    real = intervals["attention_intervals"][:, 1] > 0  # non-padding positions
    with torch.no_grad():
        expected = sdpa(**dense)
        # The flex path never builds the dense mask or the additive bias.
        for name in ("intervals_to_mask", "_attention_bias"):
            monkeypatch.setattr(modeling_glm, name, _forbidden)
        got = flex(**intervals)
    torch.testing.assert_close(got.logits[real], expected.logits[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-6, atol=1e-6)


def _forbidden(*args, **kwargs):
    raise AssertionError("the dense mask was built on the flex path")


def test_sdpa_model_accepts_intervals_as_a_dense_mask():
    dense, intervals = interval_batch()
    model = glm(int(dense["input_ids"].max()) + 1).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**intervals).logits, model(**dense).logits)


def test_flex_attention_has_no_cpu_backward_in_torch():
    """Why flex gradients are checked on GPU only (tests/test_gpu.py): torch's
    FlexAttention refuses backward on CPU."""
    dense, intervals = interval_batch()
    model = glm(int(dense["input_ids"].max()) + 1, attention_implementation="flex")
    with pytest.raises(NotImplementedError, match="does not support backward on CPU"):
        model(**intervals)


def test_intervals_are_checked():
    dense, intervals = interval_batch()
    model = glm(int(dense["input_ids"].max()) + 1).eval()
    both = {**intervals, "attention_mask": dense["attention_mask"]}
    with pytest.raises(ValueError, match="not both"):
        model(**both)
    bad = {**intervals, "attention_intervals": intervals["attention_intervals"][:, :1]}
    with pytest.raises(ValueError, match=r"attention_intervals must be a long tensor"):
        model(**bad)


def test_compiled_flex_attention_traces_the_interval_block_mask():
    """The CUDA path compiles flex_attention; tracing our mask function (a closure over
    the batch's intervals) is device-independent, so it is checked here on CPU: the
    compiled forward equals SDPA on the dense mask, for two batches of one shape."""
    dense, intervals = interval_batch(count=30, max_length=256, pad=64)
    spans = intervals["attention_intervals"]
    rows, _, length = spans.shape
    mask = modeling_glm.intervals_to_mask(spans)
    real = (spans[:, 1] > 0)[:, None, :, None]  # non-padding queries
    compiled = torch.compile(flex_attention, dynamic=False)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        q, k, v = (torch.randn(rows, 4, length, 16, generator=generator) for _ in range(3))
        got = compiled(q, k, v, block_mask=modeling_glm.interval_block_mask(spans.clone()))
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(
            got.masked_fill(~real, 0), expected.masked_fill(~real, 0), rtol=1e-5, atol=1e-5
        )
