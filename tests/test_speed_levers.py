"""Training speed levers: equality with the plain path (issue 13).

- the head and loss on labelled positions only (chunked on CPU),
- FlexAttention with a block mask built from per-token attention intervals,
- selective activation checkpointing (every k-th block).
"""

from __future__ import annotations

import pytest
import torch
from test_collator import SPECIAL, _mixed_examples

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
