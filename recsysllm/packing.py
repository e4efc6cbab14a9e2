"""Packing across batches: a dataset of full rows, planned over windows of examples.

Packing within a batch (``BlankInfillingCollator(packing=True)``) leaves the last rows
of every batch half empty: with 16 examples of ~90 tokens at max length 256 about 85%
of the cells hold tokens. :class:`PackedDataset` plans the rows before batching: the
examples of each *window* (``window`` consecutive examples of one epoch) are placed
best-fit decreasing (longest first, each into the fullest row it still fits) into
rows of at most ``max_length`` tokens, and a micro-batch is then ``batch_size`` such
rows. Nearly every row is full, and all rows of a batch are about ``max_length`` wide.

Determinism and resume. The plan depends only on the encoded lengths of the examples
(a function of the data, the collator's seed and the epoch) and on ``(seed, epoch,
window)``, which also seed the shuffle of each window's rows (best-fit decreasing
creates rows in order of their longest example; the shuffle spreads long and short
examples over the epoch again). Item ``i`` is therefore the same in every process and
every run, and HF Trainer's resume, which skips the batches already consumed of a
sequentially read dataset, reproduces the remaining rows exactly.

Example:
    >>> pack_rows([5, 3, 4, 2, 6], max_length=8)
    [[4, 3], [0, 1], [2]]
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch


def pack_rows(
    lengths: Sequence[int], max_length: int, max_example_length: int | None = None
) -> list[list[int]]:
    """Best-fit decreasing: indices of ``lengths`` grouped into rows of <= ``max_length``.

    Longest first; each goes into the row with the least room left that still fits it,
    or opens a new row. Ties keep index order (a stable sort), so the result is a pure
    function of ``lengths``. Rows come out in the order they were opened. An example
    longer than ``max_length`` (allowed up to ``max_example_length``) gets a row of its
    own: short rows for short examples keep the attention cost of a packed row low
    (it grows with the square of the row's width) while rare long examples still train.

    Raises:
        ValueError: a length that is not in ``1..max(max_length, max_example_length)``.

    >>> pack_rows([5, 12, 3], max_length=8, max_example_length=16)
    [[1], [0, 2]]
    """
    longest = max(max_length, max_example_length or 0)
    for index, length in enumerate(lengths):
        if not 0 < length <= longest:
            raise ValueError(
                f"example {index}: encoded length {length} is not in 1..{longest} "
                f"(max_length={max_length}, max_example_length={max_example_length})"
            )
    rows: list[list[int]] = []
    # Open rows as (room left, row index), sorted: bisect finds the tightest fit.
    open_rows: list[tuple[int, int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        length = lengths[index]
        position = bisect.bisect_left(open_rows, (length, -1))
        if position == len(open_rows):
            rows.append([index])
            room, row = max_length - length, len(rows) - 1
        else:
            room, row = open_rows.pop(position)
            rows[row].append(index)
            room -= length
        if room > 0:
            bisect.insort(open_rows, (room, row))
    return rows


def window_rows(
    lengths: Sequence[int],
    max_length: int,
    window: int,
    seed: int,
    epoch: int,
    max_example_length: int | None = None,
) -> list[list[int]]:
    """The rows of one epoch: :func:`pack_rows` per window, each window's rows shuffled.

    Args:
        lengths: encoded length of each example of the epoch, in reading order.
        max_length: tokens per row.
        window: examples planned together (the last window may be shorter).
        seed: seed of the row shuffles.
        epoch: the epoch, mixed into the shuffle seed.
        max_example_length: longest example allowed (alone in its row; default
            ``max_length``).

    Returns:
        Rows of example indices (into ``lengths``); every index appears exactly once.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    rows: list[list[int]] = []
    for number, start in enumerate(range(0, len(lengths), window)):
        planned = pack_rows(lengths[start : start + window], max_length, max_example_length)
        order = np.random.default_rng([seed, epoch, number]).permutation(len(planned))
        rows += [[start + i for i in planned[r]] for r in order.tolist()]
    return rows


class PackedDataset(torch.utils.data.Dataset):
    """Rows of examples of an epoch-structured dataset, packed per window (module doc).

    Args:
        dataset: examples in reading order; ``offsets[e]:offsets[e + 1]`` is epoch ``e``
            (``MixtureDataset``'s layout).
        offsets: epoch boundaries, ``len(epochs) + 1`` increasing ints from 0.
        encoded_length: tokens an example takes in its row (its Part A + Part B as the
            collator lays it out); called once per example when the plan is made.
        max_length: tokens per row.
        window: examples planned together.
        seed: seed of the row shuffles.
        max_example_length: longest example allowed (alone in its row; default
            ``max_length``).

    Item ``i`` is a tuple of the examples of row ``i``.
    """

    def __init__(
        self,
        dataset: Any,
        offsets: Sequence[int],
        encoded_length: Callable[[Any], int],
        max_length: int,
        window: int,
        seed: int,
        max_example_length: int | None = None,
    ) -> None:
        self.dataset = dataset
        self.rows: list[list[int]] = []
        for epoch, (start, end) in enumerate(zip(offsets[:-1], offsets[1:], strict=True)):
            lengths = [encoded_length(dataset[i]) for i in range(start, end)]
            planned = window_rows(lengths, max_length, window, seed, epoch, max_example_length)
            self.rows += [[start + i for i in row] for row in planned]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        return tuple(self.dataset[i] for i in self.rows[index])
