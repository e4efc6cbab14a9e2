"""Entity-aware blank infilling: TokenizedExample[] -> model batch (DESIGN.md section 4).

Every example becomes one GLM blank-infilling sequence, Part A then Part B:

- Part A = ``[CLS] + corrupted text + [eos]``: GLM's tokenizer wraps every input as
  ``[CLS] + ids + [eos]`` (GLM_REFERENCE.md), and each masked span of the text is
  replaced by one mask token. [CLS] and [eos] are never masked. Inter-positions are
  ``0..|A|-1``; intra-positions come from :func:`positions.part_a_intra_positions`.
- Part B, one block per span in chronological order (sorted by start, never
  shuffled): input ``[sop] + span``, target ``span + [eop]``; inter = the Part A
  index of the span's mask token, intra from :func:`positions.span_intra_positions`.
- Attention: Part A bidirectional within A; Part B sees all of A and is causal
  within B (so later spans see earlier ones); padding is seen by nobody.

A sequence of ``n`` text tokens with ``k`` spans always takes ``n + 2 + 2k`` tokens
(each span adds its mask token and its [sop]; [CLS], [eos] add two), whichever spans
are chosen. Truncation uses that count.

Spans. A *unit* is one whole entity occurrence or one plain token; every span is a
run of whole units, so an entity is masked whole or not at all.

- Task examples: the answer is the one span, hidden by [MASK] (``answer_mask="mask"``)
  or [gMASK] (``"gmask"``, the answer must end the text).
- Pretraining documents (no answer span), one mode per document drawn with
  probabilities ``MaskingConfig.mask_prob : smask_prob : gmask_prob``:
  [MASK] spans of Poisson(3) units until ~15% of the tokens are covered (GLM's
  placement, at least one unmasked unit between spans); [sMASK] whole sentences,
  ~15% of the tokens; [gMASK] one suffix span of 50-100% of the text starting on a
  unit boundary (GLM's document mode is always a suffix, so is ours).

Truncation of a task example is :mod:`recsysllm.prompt_layout`'s: Part A is a
function of the example without its answer (room is reserved for an answer of the
``AnswerBudget`` bound, never of the gold answer's length); the oldest history items go
first; candidate lists are never cut (a prompt whose candidates do not fit is refused,
naming the template). A pretraining document (when ``n + 2 + 2k > max_length``) is first
cut to ``max_length - 4`` tokens, masked, then cut further from the left (with the spans
that start there) until its spans fit.

Packing (``packing=True``): examples are placed first-fit decreasing (longest first,
each into the first row with room) into rows of at most ``max_length`` tokens; each row holds a block-diagonal
mask (examples never see each other) and positions restart per example. ``__call__``
then returns as many rows as the examples need (fewer than examples); without
packing one row per example.

Determinism: the masks of a pretraining document depend only on ``(seed, epoch,
its token ids)``: a PCG64 generator is derived per document from a hash of those.
The result therefore does not depend on batch composition, packing, DataLoader
worker count or worker scheduling (each worker holds its own copy of the collator;
all copies agree). Call :meth:`BlankInfillingCollator.set_epoch` at the start of each
epoch to draw new masks; worker copies see it when the DataLoader re-creates its
workers each epoch (``persistent_workers=False``, the default). Task examples involve
no randomness.

Example::

    collator = BlankInfillingCollator(tokenizer, max_length=1024, seed=42)
    batch = collator([tokenizer.tokenize_example(e) for e in examples])
    batch["attention_mask"].shape  # [rows, 1, L, L]
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from recsysllm.config import help_field
from recsysllm.item_loss import ItemAnswerVocabulary
from recsysllm.positions import part_a_intra_positions, span_intra_positions
from recsysllm.prompt_layout import (
    SPECIALS_FOR_ONE_SPAN,
    AnswerBudget,
    PromptInputs,
    SpecialTokenIds,
    plan_task_text,
)
from recsysllm.prompt_layout import build_prompt as layout_build_prompt
from recsysllm.schema import TokenizedExample
from recsysllm.trie import pad_token_sets

__all__ = [
    "IGNORE_INDEX",
    "AnswerBudget",
    "BlankInfilling",
    "BlankInfillingCollator",
    "MaskingConfig",
    "PromptInputs",
    "Span",
    "SpecialTokenIds",
    "build_blank_infilling",
]

IGNORE_INDEX = -100
ATTENTION_LAYOUTS = ("mask", "intervals")
# Tokens every sequence adds around a text with one span: [CLS], mask, [eos], [sop].
_SPECIALS_FOR_ONE_SPAN = SPECIALS_FOR_ONE_SPAN


@dataclass(frozen=True)
class MaskingConfig:
    """How pretraining documents are corrupted (task examples mask their answer)."""

    mask_prob: float = help_field("weight of entity-level [MASK] spans per document", default=0.5)
    smask_prob: float = help_field("weight of sentence-level [sMASK] per document", default=0.25)
    gmask_prob: float = help_field(
        "weight of document-level [gMASK] per document (0 for glm-large)", default=0.25
    )
    mask_ratio: float = help_field("[MASK] mode: share of tokens to cover", default=0.15)
    span_poisson_lambda: float = help_field(
        "[MASK] mode: mean of the Poisson span length, in units", default=3.0
    )
    max_span_units: int = help_field(
        "[MASK] mode: span lengths are clipped to 1..max_span_units", default=39
    )
    sentence_ratio: float = help_field(
        "[sMASK] mode: share of tokens to cover with whole sentences", default=0.15
    )
    gmask_min_ratio: float = help_field(
        "[gMASK] mode: the suffix covers a share uniform in [this, 1]", default=0.5
    )

    def __post_init__(self) -> None:
        for name in ("mask_prob", "smask_prob", "gmask_prob"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"MaskingConfig.{name}: must be a finite number >= 0, got {value}")
        if self.mask_prob + self.smask_prob + self.gmask_prob <= 0:
            raise ValueError(
                "MaskingConfig.mask_prob: mask_prob + smask_prob + gmask_prob must be > 0"
            )
        for name in ("mask_ratio", "sentence_ratio"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"MaskingConfig.{name}: must be in (0, 1), got {value}")
        if not self.span_poisson_lambda > 0:
            raise ValueError(
                f"MaskingConfig.span_poisson_lambda: must be > 0, got {self.span_poisson_lambda}"
            )
        if self.max_span_units < 1:
            raise ValueError(
                f"MaskingConfig.max_span_units: must be >= 1, got {self.max_span_units}"
            )
        if not 0 < self.gmask_min_ratio <= 1:
            raise ValueError(
                f"MaskingConfig.gmask_min_ratio: must be in (0, 1], got {self.gmask_min_ratio}"
            )

    @property
    def mode_probabilities(self) -> np.ndarray:
        """[MASK], [sMASK], [gMASK] probabilities (the weights, normalised)."""
        weights = np.array([self.mask_prob, self.smask_prob, self.gmask_prob], dtype=np.float64)
        return weights / weights.sum()


class Span(NamedTuple):
    """A masked span ``[start, end)`` of the text and the mask token that replaces it."""

    start: int
    end: int
    mask_id: int


@dataclass
class BlankInfilling:
    """One example laid out as GLM Part A + Part B (plain lists of ints).

    Attributes:
        part_a_ids: corrupted text, each span replaced by its mask token. [|A|]
        part_a_inter: ``0..|A|-1``. [|A|]
        part_a_intra: 0 for plain, mask and special tokens; unmasked entities 1..len. [|A|]
        mask_positions: index in Part A of each span's mask token. [k]
        part_b_ids: ``[sop] + span`` for each span, concatenated. [|B|]
        part_b_inter: the span's mask position, for each of its tokens. [|B|]
        part_b_intra: from :func:`positions.span_intra_positions`. [|B|]
        part_b_targets: ``span + [eop]`` for each span. [|B|]
        span_lengths: tokens of each span (its Part B block has one more). [k]
        part_b_allowed: per Part B target, the token ids its restricted softmax runs
            over (``recsysllm.item_loss``), or None: the full vocabulary. [|B|] or None
        inter_offset: added to every inter position when the batch is laid out
            (``position_offsets``); the lists above stay 0-based.
    """

    part_a_ids: list[int]
    part_a_inter: list[int]
    part_a_intra: list[int]
    mask_positions: list[int]
    part_b_ids: list[int]
    part_b_inter: list[int]
    part_b_intra: list[int]
    part_b_targets: list[int]
    span_lengths: list[int]
    part_b_allowed: list[tuple[int, ...] | None] | None = None
    inter_offset: int = 0

    @property
    def part_a_length(self) -> int:
        return len(self.part_a_ids)

    @property
    def length(self) -> int:
        return len(self.part_a_ids) + len(self.part_b_ids)


def _unit_cuts(unit_ids: np.ndarray) -> np.ndarray:
    """Token indices where a unit starts, plus ``len(unit_ids)``: the legal cut points.

    A plain token always starts a unit; an entity token starts one when the previous
    token belongs to another occurrence. Cutting anywhere else would split an entity.
    """
    n = len(unit_ids)
    cuts = np.ones(n + 1, dtype=bool)
    cuts[1:n] = (unit_ids[1:] < 0) | (unit_ids[1:] != unit_ids[:-1])
    return np.flatnonzero(cuts)


def _is_cut(unit_ids: Sequence[int], index: int) -> bool:
    """Whether cutting before token ``index`` keeps every entity whole."""
    return (
        index in (0, len(unit_ids)) or unit_ids[index] < 0 or unit_ids[index] != unit_ids[index - 1]
    )


def build_blank_infilling(
    input_ids: Sequence[int],
    unit_ids: Sequence[int],
    spans: Sequence[Span | tuple[int, int, int]],
    sop_id: int,
    eop_id: int,
) -> BlankInfilling:
    """Lays out one token sequence with chosen spans as Part A + Part B.

    This is the layout step alone: no [CLS]/[eos] (the collator wraps the text in
    them before calling this), no sampling, no truncation. Plain lists, not numpy:
    with one to a few dozen spans, slicing lists is several times faster than the
    fixed cost of numpy calls on a few hundred tokens.

    Args:
        input_ids: token ids. [n]
        unit_ids: per token, its entity occurrence index or -1 for plain text. [n]
        spans: ``(start, end, mask_id)`` per span: sorted, non-overlapping, non-empty,
            each starting and ending on a unit boundary.
        sop_id: id of [sop] (``<|startofpiece|>``).
        eop_id: id of [eop] (``<|endofpiece|>``).

    Returns:
        The Part A / Part B lists.

    Raises:
        ValueError: spans out of range, empty, unsorted, overlapping or cutting an entity.

    Example (the paper's; x1 x2 x3 = entity e1, x4 x5 plain, x6 x7 = entity e2):
        >>> out = build_blank_infilling([1, 2, 3, 4, 5, 6, 7], [0, 0, 0, -1, -1, 1, 1],
        ...                             [(0, 3, 90), (4, 5, 90)], sop_id=91, eop_id=92)
        >>> out.part_a_ids, out.part_a_intra
        ([90, 4, 90, 6, 7], [0, 0, 0, 1, 2])
        >>> out.part_b_ids, out.part_b_inter, out.part_b_intra
        ([91, 1, 2, 3, 91, 5], [0, 0, 0, 0, 2, 2], [1, 2, 3, 4, 1, 2])
    """
    n = len(input_ids)
    if len(unit_ids) != n:
        raise ValueError(f"input_ids ({n}) and unit_ids ({len(unit_ids)}) differ in length")
    previous_end = 0
    for start, end, _ in spans:
        if not previous_end <= start < end <= n:
            raise ValueError(
                f"spans must be sorted, non-empty, non-overlapping and within [0, {n}]: {spans}"
            )
        if not (_is_cut(unit_ids, start) and _is_cut(unit_ids, end)):
            raise ValueError(
                f"span ({start}, {end}) cuts through an entity: unit_ids {list(unit_ids)}"
            )
        previous_end = end

    # Part A: the text with each span replaced by its mask token.
    a_ids: list[int] = []
    a_units: list[int] = []  # -1 for mask tokens: they count as plain
    mask_positions = []
    previous_end = 0
    for start, end, mask_id in spans:
        a_ids += input_ids[previous_end:start]
        a_units += unit_ids[previous_end:start]
        mask_positions.append(len(a_ids))
        a_ids.append(mask_id)
        a_units.append(-1)
        previous_end = end
    a_ids += input_ids[previous_end:]
    a_units += unit_ids[previous_end:]

    # Part B: per span, input [sop] + span, target span + [eop], all at the mask's inter.
    b_ids: list[int] = []
    b_inter: list[int] = []
    b_intra: list[int] = []
    b_targets: list[int] = []
    for (start, end, _), position in zip(spans, mask_positions, strict=True):
        span = list(input_ids[start:end])
        b_ids += [sop_id, *span]
        b_targets += [*span, eop_id]
        b_inter += [position] * (end - start + 1)
        b_intra += span_intra_positions(unit_ids[start:end])
    return BlankInfilling(
        part_a_ids=a_ids,
        part_a_inter=list(range(len(a_ids))),
        part_a_intra=part_a_intra_positions(a_units),
        mask_positions=mask_positions,
        part_b_ids=b_ids,
        part_b_inter=b_inter,
        part_b_intra=b_intra,
        part_b_targets=b_targets,
        span_lengths=[end - start for start, end, _ in spans],
    )


@dataclass(frozen=True)
class NonPadFraction:
    """Share of non-padding cells in the returned ``input_ids``."""

    last_batch: float
    cumulative: float


class BlankInfillingCollator:
    """Collates TokenizedExamples into GLM blank-infilling batches (see the module doc).

    Returns a dict of tensors:

    - ``input_ids`` [rows, L] long, padded with the tokenizer's pad id;
    - ``position_ids`` [rows, 2, L] long (row 0 inter, row 1 intra; 0 on padding);
    - ``attention_mask`` [rows, 1, L, L] bool, True = may attend (padding rows and
      columns all False: the model handles fully masked rows);
    - ``labels`` [rows, L] long, -100 except Part B targets (aligned, not shifted).

    ``L`` is the longest row, rounded up to ``pad_to_multiple_of``. ``rows`` equals the
    number of examples without packing, and is as many as needed with packing.
    ``last_placement[i] = (row, offset, length)`` says where example i went.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        masking: MaskingConfig | None = None,
        packing: bool = True,
        seed: int = 0,
        pad_to_multiple_of: int | None = None,
        answer_budget: AnswerBudget | None = None,
        attention_layout: str = "mask",
        item_answers: ItemAnswerVocabulary | None = None,
        position_offsets: bool = False,
    ) -> None:
        """
        Args:
            tokenizer: object exposing ``cls_token_id, eos_token_id, pad_token_id,
                mask_token_id, smask_token_id, gmask_token_id, sop_token_id, eop_token_id``.
            max_length: tokens per example (Part A + Part B) and per packed row.
            masking: how pretraining documents are masked.
            packing: pack several examples per row (block-diagonal attention).
            seed: seed of the pretraining masks.
            pad_to_multiple_of: round the padded length up to a multiple of this.
            answer_budget: answer tokens reserved by task examples' truncation
                (``AnswerBudget.for_catalog`` in training and inference; see
                :mod:`recsysllm.prompt_layout`).
            attention_layout: "mask" returns ``attention_mask`` [rows, 1, L, L] bool;
                "intervals" returns ``attention_intervals`` [rows, 2, L] long instead,
                the [start, end) of the keys each query sees (0, 0 for padding): the
                same mask in O(L) (the model's FlexAttention path builds its block
                mask from it).
        """
        if attention_layout not in ATTENTION_LAYOUTS:
            raise ValueError(
                f"attention_layout must be one of {ATTENTION_LAYOUTS}, got {attention_layout!r}"
            )
        self.attention_layout = attention_layout
        self.item_answers = item_answers
        self.position_offsets = position_offsets
        self.special = SpecialTokenIds.from_tokenizer(tokenizer)
        self.masking = masking if masking is not None else MaskingConfig()
        self.answer_budget = answer_budget if answer_budget is not None else AnswerBudget()
        if max_length < _SPECIALS_FOR_ONE_SPAN + 1:
            raise ValueError(
                f"max_length must be >= {_SPECIALS_FOR_ONE_SPAN + 1}, got {max_length}"
            )
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        if self.masking.smask_prob > 0 and self.special.smask is None:
            raise ValueError("the tokenizer has no [sMASK] token: set MaskingConfig.smask_prob=0")
        if self.masking.gmask_prob > 0 and self.special.gmask is None:
            raise ValueError("the tokenizer has no [gMASK] token: set MaskingConfig.gmask_prob=0")
        self.max_length = max_length
        self.packing = packing
        self.seed = seed
        self.pad_to_multiple_of = pad_to_multiple_of
        self.epoch = 0
        self.last_placement: list[tuple[int, int, int]] = []
        self._last_fraction = float("nan")
        self._tokens_total = 0
        self._cells_total = 0
        self._mode_thresholds = np.cumsum(self.masking.mode_probabilities)[:-1]
        # Reused for every example: Part A inter-positions and the Part B causal block.
        self._arange = np.arange(max_length, dtype=np.int64)
        self._causal = np.tril(np.ones((max_length, max_length), dtype=bool))

    def set_epoch(self, epoch: int) -> None:
        """Draw different pretraining masks from this epoch on (see the module doc)."""
        self.epoch = epoch

    @property
    def non_pad_fraction(self) -> NonPadFraction:
        """Non-padding share of the last batch and of all batches so far."""
        cumulative = self._tokens_total / self._cells_total if self._cells_total else float("nan")
        return NonPadFraction(last_batch=self._last_fraction, cumulative=cumulative)

    # ----------------------------------------------------------------- batch

    def __call__(self, examples: list[TokenizedExample]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("BlankInfillingCollator called with no examples")
        encoded = [self.encode(example) for example in examples]
        placement, row_lengths = self._place([e.length for e in encoded])
        return self._layout(encoded, placement, row_lengths)

    def collate_rows(
        self,
        rows: Sequence[Sequence[TokenizedExample | BlankInfilling]],
        row_length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Rows planned elsewhere (``packing.PackedDataset``): each row's examples side by
        side in the given order, one output row per input row, whatever ``packing`` says.

        Args:
            rows: the examples of each row: TokenizedExamples (encoded here, with this
                collator's epoch) or BlankInfillings the caller encoded (e.g. each with
                its own epoch).
            row_length: most tokens a row of several examples may hold (default
                ``max_length``); a row of one example may be up to ``max_length``.

        ``last_placement`` lists the examples row by row.
        """
        row_length = self.max_length if row_length is None else row_length
        if not rows or not all(rows):
            raise ValueError("collate_rows needs at least one row and no empty row")
        encoded: list[BlankInfilling] = []
        placement: list[tuple[int, int, int]] = []
        row_lengths: list[int] = []
        for row, examples in enumerate(rows):
            offset = 0
            for example in examples:
                item = example if isinstance(example, BlankInfilling) else self.encode(example)
                encoded.append(item)
                placement.append((row, offset, item.length))
                offset += item.length
            if offset > row_length and len(examples) > 1:
                raise ValueError(
                    f"row {row}: its examples take {offset} tokens, more than the row "
                    f"length {row_length}"
                )
            row_lengths.append(offset)
        return self._layout(encoded, placement, row_lengths)

    def _layout(
        self,
        encoded: list[BlankInfilling],
        placement: list[tuple[int, int, int]],
        row_lengths: list[int],
    ) -> dict[str, torch.Tensor]:
        """The batch tensors for examples placed at (row, offset, length)."""
        width = self.padded_width(max(row_lengths))
        rows = len(row_lengths)

        input_ids = np.full((rows, width), self.special.pad, dtype=np.int64)
        position_ids = np.zeros((rows, 2, width), dtype=np.int64)
        labels = np.full((rows, width), IGNORE_INDEX, dtype=np.int64)
        # Filled block by block at memset speed; per-token broadcast comparisons were
        # 2.5x slower at L=512. Each query row's visible keys form one interval of its
        # own example: [start, end of A) for Part A, [start, itself] for Part B.
        dense = self.attention_layout == "mask"
        if dense:
            attention = np.zeros((rows, 1, width, width), dtype=bool)
        else:
            intervals = np.zeros((rows, 2, width), dtype=np.int64)  # [start, end) per query
        for item, (row, start, length) in zip(encoded, placement, strict=True):
            a = item.part_a_length
            a_end, end = start + a, start + length
            input_ids[row, start:a_end] = item.part_a_ids
            input_ids[row, a_end:end] = item.part_b_ids
            position_ids[row, 0, start:a_end] = self._arange[:a] + item.inter_offset
            position_ids[row, 0, a_end:end] = np.asarray(item.part_b_inter) + item.inter_offset
            position_ids[row, 1, start:a_end] = item.part_a_intra
            position_ids[row, 1, a_end:end] = item.part_b_intra
            labels[row, a_end:end] = item.part_b_targets
            if dense:
                attention[row, 0, start:end, start:a_end] = True
                attention[row, 0, a_end:end, a_end:end] = self._causal[: length - a, : length - a]
            else:
                intervals[row, 0, start:end] = start
                intervals[row, 1, start:a_end] = a_end
                intervals[row, 1, a_end:end] = np.arange(a_end + 1, end + 1)

        restricted = {}
        if self.item_answers is not None:
            # One row per labelled token, in the order of labels != -100 (row-major).
            allowed: list[tuple[int, ...] | None] = []
            order = sorted(range(len(encoded)), key=lambda i: placement[i][:2])
            for index in order:
                item = encoded[index]
                allowed += item.part_b_allowed or [None] * len(item.part_b_targets)
            restricted["label_allowed"] = pad_token_sets(allowed)

        tokens = sum(row_lengths)
        self._last_fraction = tokens / (rows * width)
        self._tokens_total += tokens
        self._cells_total += rows * width
        self.last_placement = placement
        self.last_row_lengths = list(row_lengths)
        return {
            "input_ids": torch.from_numpy(input_ids),
            "position_ids": torch.from_numpy(position_ids),
            **(
                {"attention_mask": torch.from_numpy(attention)}
                if dense
                else {"attention_intervals": torch.from_numpy(intervals)}
            ),
            "labels": torch.from_numpy(labels),
            **restricted,
        }

    def padded_width(self, width: int) -> int:
        """``width`` rounded up to ``pad_to_multiple_of`` (unchanged without one)."""
        multiple = self.pad_to_multiple_of or 1
        return -(-width // multiple) * multiple

    def _place(self, lengths: list[int]) -> tuple[list[tuple[int, int, int]], list[int]]:
        """(row, offset, length) per example and the used length of each row."""
        if not self.packing:
            return [(i, 0, n) for i, n in enumerate(lengths)], list(lengths)
        # First-fit decreasing: longest example first, each into the first row with room.
        # Deterministic; on MovieLens-style batches it pads ~2 points less than
        # first-fit in the given order (benchmarks/bench_collator.py).
        row_lengths: list[int] = []
        placement: list[tuple[int, int, int]] = [(0, 0, 0)] * len(lengths)
        for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            n = lengths[index]
            row = next(
                (r for r, used in enumerate(row_lengths) if used + n <= self.max_length),
                len(row_lengths),
            )
            if row == len(row_lengths):
                row_lengths.append(0)
            placement[index] = (row, row_lengths[row], n)
            row_lengths[row] += n
        return placement, row_lengths

    # --------------------------------------------------------------- example

    def encode(self, example: TokenizedExample, max_length: int | None = None) -> BlankInfilling:
        """Validates, truncates, masks and lays out one example (Part A with [CLS]/[eos]).

        Args:
            example: a task example or a pretraining document.
            max_length: defaults to the collator's ``max_length``.
        """
        max_length = self.max_length if max_length is None else max_length
        if max_length < _SPECIALS_FOR_ONE_SPAN + 1:
            raise ValueError(
                f"max_length must be >= {_SPECIALS_FOR_ONE_SPAN + 1}, got {max_length}"
            )
        ids, units, unit_array = _checked_example(example)
        if example.answer_span is not None:
            # Part A comes from prompt_layout, which never looks at the answer's length.
            plan = plan_task_text(example, self.special, self.answer_budget, max_length)
            left = [ids[i] for i in plan.left]
            text_ids = [self.special.cls, *left, *plan.answer, *(ids[i] for i in plan.right)]
            text_units = [-1, *(units[i] for i in plan.left), *plan.answer_units]
            text_units += [units[i] for i in plan.right]
            span = Span(len(left) + 1, len(left) + 1 + len(plan.answer), plan.mask_id)
            encoded = build_blank_infilling(
                [*text_ids, self.special.eos],
                [*text_units, -1],
                [span],
                self.special.sop,
                self.special.eop,
            )
            if self.item_answers is not None:
                encoded.part_b_allowed = self.item_answers.allowed_for(example.example, plan.answer)
            return self._offset(encoded, ids, unit_array, max_length)
        lo, hi, spans = self._pretrain_spans(example, unit_array, max_length)
        # Wrap the kept text as [CLS] + text + [eos]; the spans move right by one.
        text_ids = [self.special.cls, *ids[lo:hi], self.special.eos]
        text_units = [-1, *units[lo:hi], -1]
        shifted = [Span(s - lo + 1, e - lo + 1, m) for s, e, m in spans]
        encoded = build_blank_infilling(
            text_ids, text_units, shifted, self.special.sop, self.special.eop
        )
        return self._offset(encoded, ids, unit_array, max_length)

    def _offset(
        self, encoded: BlankInfilling, ids: list[int], units: np.ndarray, max_length: int
    ) -> BlankInfilling:
        """With ``position_offsets``: the example's random inter-position offset."""
        if self.position_offsets:
            rng = self._generator(ids, units, salt=b"inter offset")
            encoded.inter_offset = int(rng.integers(0, max_length - encoded.part_a_length + 1))
        return encoded

    def build_prompt(
        self, example: TokenizedExample, max_length: int | None = None
    ) -> PromptInputs:
        """Part A of a task example, as :func:`prompt_layout.build_prompt` builds it."""
        if example.answer_span is None:
            raise ValueError(
                f"{example.describe()}: build_prompt needs a task example with an answer_span"
            )
        max_length = self.max_length if max_length is None else max_length
        return layout_build_prompt(example, self.special, self.answer_budget, max_length)

    def _pretrain_spans(
        self, example: TokenizedExample, units: np.ndarray, max_length: int
    ) -> tuple[int, int, list[Span]]:
        """Kept text range and sampled spans (text coordinates) of a pretraining document."""
        n = len(units)
        cuts = _unit_cuts(units)
        # Room for at least one span; the spans are then fitted below.
        lo = int(cuts[np.searchsorted(cuts, n - (max_length - _SPECIALS_FOR_ONE_SPAN))])
        if lo >= n:
            raise ValueError(
                f"{example.describe()}: its last entity alone is longer than max_length={max_length} "
                "allows; nothing can be kept without splitting it"
            )
        # The legal cut points of the kept text, computed once for all samplers.
        text_cuts = cuts if lo == 0 else cuts[np.searchsorted(cuts, lo) :] - lo
        length = n - lo
        rng = self._generator(example.input_ids, units)
        # 0: [MASK], 1: [sMASK], 2: [gMASK] (searchsorted: Generator.choice costs 10x more).
        mode = int(np.searchsorted(self._mode_thresholds, rng.random(), side="right"))
        spans: list[tuple[int, int]] = []
        if mode == 1:
            sentences = np.asarray(example.sentence_ids[lo:], dtype=np.int64)
            spans = _sample_sentence_spans(rng, sentences, text_cuts, self.masking.sentence_ratio)
            mask_id = self.special.smask
        if mode == 2:
            spans = [_sample_document_span(rng, text_cuts, self.masking.gmask_min_ratio)]
            mask_id = self.special.gmask
        if not spans:  # [MASK] mode, or a document without a sentence that fits
            spans = _sample_unit_spans(rng, text_cuts, self.masking)
            mask_id = self.special.mask

        # n + 2 + 2k tokens in all: drop units (and the spans starting there) from the left.
        excess = length + 2 + 2 * len(spans) - max_length
        if excess > 0:
            drop = int(text_cuts[np.searchsorted(text_cuts, excess)])
            while spans and spans[0][0] < drop:
                drop = max(drop, spans.pop(0)[1])
            if not spans:
                # Only reachable with many tiny sentences at the very start: mask the last
                # unit instead, which fits untruncated (length <= max_length - 4).
                spans, mask_id, drop = [(int(text_cuts[-2]), length)], self.special.mask, 0
            lo += drop
            spans = [(s - drop, e - drop) for s, e in spans]
        return lo, n, [Span(s + lo, e + lo, mask_id) for s, e in spans]

    def _generator(
        self, ids: list[int], units: np.ndarray, salt: bytes = b""
    ) -> np.random.Generator:
        """A generator that depends only on (seed, epoch, the document's ids and units,
        and ``salt``: one independent stream per use)."""
        digest = hashlib.blake2b(
            digest_size=16, key=f"{self.seed}:{self.epoch}".encode(), salt=salt
        )
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
        digest.update(units.tobytes())
        return np.random.Generator(np.random.PCG64(int.from_bytes(digest.digest(), "little")))


# ------------------------------------------------------------------ helpers


def _checked_example(example: TokenizedExample) -> tuple[list[int], list[int], np.ndarray]:
    """Checks one example; returns its input_ids, unit_ids and unit_ids as an int64 array."""
    where = example.describe()
    ids, units = example.input_ids, example.unit_ids
    n = len(ids)
    if len(units) != n or len(example.sentence_ids) != n:
        raise ValueError(
            f"{where}: input_ids ({n}), unit_ids ({len(units)}) and "
            f"sentence_ids ({len(example.sentence_ids)}) differ in length"
        )
    if n == 0:
        raise ValueError(f"{where}: input_ids is empty")
    if min(ids) < 0:
        raise ValueError(
            f"{where}: input_ids: negative id at token {next(i for i, t in enumerate(ids) if t < 0)}"
        )
    if min(units) < -1:
        raise ValueError(
            f"{where}: unit_ids: value below -1 at token {next(i for i, u in enumerate(units) if u < -1)}"
        )
    unit_array = np.asarray(units, dtype=np.int64)
    # Each entity occurrence must be one contiguous run: a second run of the same
    # index means two entity spans overlap or interleave.
    run_units = unit_array[
        np.flatnonzero(np.concatenate(([True], unit_array[1:] != unit_array[:-1])))
    ]
    run_units = run_units[run_units >= 0]
    if len(np.unique(run_units)) != len(run_units):
        values, counts = np.unique(run_units, return_counts=True)
        bad = int(values[np.argmax(counts > 1)])
        tokens = np.flatnonzero(unit_array == bad).tolist()
        raise ValueError(
            f"{where}: unit_ids: entity occurrence {bad} is not one contiguous run (tokens {tokens}); "
            "entity spans overlap or interleave"
        )
    if example.answer_span is not None:
        start, end = example.answer_span
        if not 0 <= start < end <= n:
            raise ValueError(
                f"{where}: answer_span {example.answer_span} outside the sequence of {n} tokens"
            )
        if not (_is_cut(units, start) and _is_cut(units, end)):
            raise ValueError(f"{where}: answer_span {example.answer_span} cuts through an entity")
        if example.answer_mask not in ("mask", "gmask"):
            raise ValueError(
                f"{where}: answer_mask {example.answer_mask!r} must be 'mask' or 'gmask'"
            )
        if example.answer_mask == "gmask" and end != n:
            raise ValueError(
                f"{where}: answer_mask 'gmask' needs the answer at the end, but answer_span "
                f"{example.answer_span} ends before the last token ({n})"
            )
    return ids, units, unit_array


def _sample_unit_spans(
    rng: np.random.Generator, cuts: np.ndarray, masking: MaskingConfig
) -> list[tuple[int, int]]:
    """[MASK] mode: spans of Poisson-many whole units, ~mask_ratio of the tokens.

    Drawing ``mask_ratio`` of the *units* with uniform placement covers ``mask_ratio``
    of the *tokens* in expectation. A length is kept only while it brings the total
    closer to the target; spans are placed as GLM does (a random composition of the
    unmasked units, at least one between two spans), hence already sorted.
    """
    unit_count = len(cuts) - 1
    target = masking.mask_ratio * unit_count
    # Enough draws for the target with overwhelming probability (the loop stops early).
    size = int(2 * target / masking.span_poisson_lambda) + 16
    draws = np.clip(
        rng.poisson(masking.span_poisson_lambda, size=size), 1, masking.max_span_units
    ).tolist()
    lengths = [min(draws[0], unit_count)]
    total = lengths[0]
    for length in draws[1:]:
        if (
            total >= target
            or total + length / 2 >= target
            or total + length + len(lengths) > unit_count
        ):
            break
        lengths.append(length)
        total += length
    k = len(lengths)
    room = unit_count - total - (k - 1)  # free units to distribute in k + 1 gaps
    places = np.sort(rng.integers(0, room + 1, size=k))
    first_units = places + np.cumsum([0] + [length + 1 for length in lengths[:-1]])
    return [
        (int(cuts[u]), int(cuts[u + length]))
        for u, length in zip(first_units.tolist(), lengths, strict=True)
    ]


def _sample_sentence_spans(
    rng: np.random.Generator, sentence_ids: np.ndarray, cuts: np.ndarray, ratio: float
) -> list[tuple[int, int]]:
    """[sMASK] mode: whole sentences, ~ratio of the tokens; [] when no sentence fits.

    Sentences are maximal runs of equal sentence id, cut only where a unit starts (a
    sentence break inside an entity is ignored). Sentences are visited in random order
    and kept while each brings the coverage closer to the target.
    """
    n = len(sentence_ids)
    cut = np.zeros(n + 1, dtype=bool)
    cut[cuts] = True
    cut[1:n] &= sentence_ids[1:] != sentence_ids[:-1]
    bounds = np.flatnonzero(cut)
    lengths = np.diff(bounds)
    target = ratio * n
    chosen, covered = [], 0
    for index in rng.permutation(len(lengths)).tolist():
        if covered + lengths[index] / 2 < target:
            chosen.append(index)
            covered += int(lengths[index])
    return [(int(bounds[i]), int(bounds[i + 1])) for i in sorted(chosen)]


def _sample_document_span(
    rng: np.random.Generator, cuts: np.ndarray, min_ratio: float
) -> tuple[int, int]:
    """[gMASK] mode: one suffix covering min_ratio..100% of the tokens, from a unit start."""
    n = int(cuts[-1])
    length = int(rng.integers(math.ceil(min_ratio * n), n + 1))
    # Snap the start left to the unit it falls in: the span only grows, staying <= n.
    start = int(cuts[np.searchsorted(cuts, n - length, side="right") - 1])
    return start, n
