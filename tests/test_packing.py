"""Packing across batches: the row planner and the dataset of rows (recsysllm.packing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_collator import SPECIAL, _mixed_examples

from recsysllm.collator import BlankInfillingCollator
from recsysllm.packing import PackedDataset, pack_rows, window_rows


def test_pack_rows_is_best_fit_decreasing_by_hand():
    # Longest first: 7 opens row 0 (room 3); 6 opens row 1 (room 4); 4 -> row 1 (room 0,
    # the tightest that fits: row 0 has only 3); 3 -> row 0 (room 0); 2 opens row 2;
    # 1 -> row 2. First-fit in the given order would need 4 rows here.
    lengths = [2, 7, 4, 6, 3, 1]
    assert pack_rows(lengths, max_length=10) == [[1, 4], [3, 2], [0, 5]]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=80), st.integers(50, 120))
def test_pack_rows_places_every_example_once_within_max_length(lengths, max_length):
    rows = pack_rows(lengths, max_length)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= max_length for row in rows)
    # A row opens only when its first example fits no open row: any two rows overflow.
    used = sorted(sum(lengths[i] for i in row) for row in rows)
    if len(used) >= 2:
        assert used[0] + used[1] > max_length
    assert len(rows) >= -(-sum(lengths) // max_length)


def test_pack_rows_refuses_an_example_longer_than_a_row():
    with pytest.raises(ValueError, match="example 1: encoded length 11"):
        pack_rows([3, 11], max_length=10)
    with pytest.raises(ValueError, match="example 1: encoded length 17"):
        pack_rows([3, 17], max_length=10, max_example_length=16)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=80))
def test_short_rows_pack_short_examples_and_give_long_ones_a_row_each(lengths):
    """Rows of 24 for examples up to 60 (data.packing_row_length < max_length): every
    example once; a row over 24 tokens is one example alone; the short ones are packed
    exactly as pack_rows packs them without the long ones."""
    rows = pack_rows(lengths, max_length=24, max_example_length=60)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    for row in rows:
        assert sum(lengths[i] for i in row) <= 24 or len(row) == 1
    long = {i for i, n in enumerate(lengths) if n > 24}
    assert {row[0] for row in rows if len(row) == 1 and row[0] in long} == long
    short = [i for i in range(len(lengths)) if i not in long]
    alone = pack_rows([lengths[i] for i in short], max_length=24) if short else []
    assert sorted(sorted(row) for row in rows if row[0] not in long) == sorted(
        sorted(short[i] for i in row) for row in alone
    )


def test_window_rows_are_deterministic_per_seed_and_epoch_and_stay_in_their_window():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 200, size=500).tolist()
    rows = window_rows(lengths, 256, window=100, seed=7, epoch=0)
    assert rows == window_rows(lengths, 256, window=100, seed=7, epoch=0)
    assert rows != window_rows(lengths, 256, window=100, seed=7, epoch=1)
    assert rows != window_rows(lengths, 256, window=100, seed=8, epoch=0)
    assert sorted(i for row in rows for i in row) == list(range(500))
    for row in rows:  # a row never mixes windows
        assert len({i // 100 for i in row}) == 1
    # Each window's rows are its own best-fit plan, only reordered.
    first = [sorted(row) for row in rows if row[0] < 100]
    assert sorted(first) == sorted(sorted(r) for r in pack_rows(lengths[:100], 256))
    # Windows of random lengths fill the rows: far above the 60% an unpacked row holds.
    filled = sum(lengths) / (256 * len(rows))
    assert filled > 0.95


class _Examples:
    """An epoch-structured stand-in dataset recording every access."""

    def __init__(self, lengths: list[int]) -> None:
        self.lengths = lengths
        self.reads: list[int] = []

    def __getitem__(self, index: int) -> int:
        self.reads.append(index)
        return index


def test_packed_dataset_plans_each_epoch_on_its_own():
    lengths = [30, 90, 60, 10, 70, 40, 50, 20]
    examples = _Examples(lengths)
    packed = PackedDataset(
        examples, [0, 5, 8], lambda i: lengths[i], max_length=100, window=4, seed=1
    )
    rows = [list(packed[i]) for i in range(len(packed))]
    assert sorted(i for row in rows for i in row) == list(range(8))
    epoch0 = [row for row in rows if row[0] < 5]
    assert rows[: len(epoch0)] == epoch0  # epoch 0's rows come first
    assert all(all(i < 5 for i in row) or all(i >= 5 for i in row) for row in rows)
    assert all(sum(lengths[i] for i in row) <= 100 for row in rows)
    # Epoch 0 windows: [0..3] and [4]; epoch 1: [5..7] (window indices restart per epoch).
    assert sorted(sorted(r) for r in epoch0) == sorted(
        [sorted(r) for r in pack_rows(lengths[:4], 100)] + [[4]]
    )


def test_collate_rows_lays_out_the_planned_rows_block_diagonally():
    examples = _mixed_examples(seed=5, count=7)
    collator = BlankInfillingCollator(SPECIAL, max_length=96, packing=True, seed=1)
    single = BlankInfillingCollator(SPECIAL, max_length=96, packing=False, seed=1)
    lengths = [collator.encode(e).length for e in examples]
    rows = pack_rows(lengths, 96)
    batch = collator.collate_rows([[examples[i] for i in row] for row in rows])
    assert batch["input_ids"].shape[0] == len(rows)
    flat = [i for row in rows for i in row]
    for (row, start, length), index in zip(collator.last_placement, flat, strict=True):
        alone = single([examples[index]])
        end = start + length
        assert torch.equal(batch["input_ids"][row, start:end], alone["input_ids"][0, :length])
        assert torch.equal(batch["labels"][row, start:end], alone["labels"][0, :length])
        assert torch.equal(
            batch["position_ids"][row, :, start:end], alone["position_ids"][0, :, :length]
        )
        mask = batch["attention_mask"][row, 0]
        assert torch.equal(
            mask[start:end, start:end], alone["attention_mask"][0, 0, :length, :length]
        )
        # Nothing across examples.
        assert not mask[start:end, :start].any() and not mask[start:end, end:].any()


def test_collate_rows_refuses_an_overfull_row():
    examples = _mixed_examples(seed=5, count=6)
    collator = BlankInfillingCollator(SPECIAL, max_length=96, seed=1)
    with pytest.raises(ValueError, match="row 0: its examples take"):
        collator.collate_rows([examples])
    # A lone example longer than the row length is a row of its own (up to max_length).
    longest = max(examples, key=lambda e: collator.encode(e).length)
    length = collator.encode(longest).length
    batch = collator.collate_rows([[longest], examples[:1]], row_length=length - 1)
    assert batch["input_ids"].shape[1] >= length
    with pytest.raises(ValueError, match="row 0: its examples take"):
        collator.collate_rows([[longest, examples[0]]], row_length=length - 1)
