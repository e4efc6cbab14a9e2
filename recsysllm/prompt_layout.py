"""The prompt layout of a task example: special-token roles, Part A, answer-independent truncation.

One module, used by the training collator (:mod:`recsysllm.collator`) and by inference
(:mod:`recsysllm.inference`), so a prompt at evaluation is the Part A training built
(DESIGN.md sections 4 and 8).

A task example's text is ``context-left + answer + context-right``. Its sequence is
``[CLS] left [mask] right [eos]`` (Part A) then ``[sop] answer`` (Part B, targets
``answer [eop]``). **Part A is a function of the example without its answer**: the
truncation that makes the sequence fit ``max_length`` reserves room for an answer of
``AnswerBudget.tokens_for(...)`` tokens, a bound that does not depend on the gold
answer, instead of the answer's own length (otherwise Part A's length reveals the
answer's token count). The bound per answer type:

- ``item``: the longest item of the catalog (:meth:`AnswerBudget.for_catalog`);
- ``rating`` / ``yesno``: ``SHORT_ANSWER_TOKENS`` (a rating is a number, yes/no a word);
- ``text``: a configured number of tokens (``data.answer_text_tokens``); a longer gold
  text (training) is cut to it in Part B only.

Truncation, when ``context + 4 + budget > max_length`` ([CLS], mask, [eos], [sop]):

1. the oldest history items are dropped (each with the separator after it), as few as
   needed; candidate lists, the profile and the template text stay whole;
2. if dropping the whole history is not enough and the example lists candidates, it is
   refused (:class:`PromptTooLongError` naming the template, the length needed and the
   configured one): a 1-of-N prompt must show all N;
3. otherwise (e.g. a long review text) whole units are dropped from the left of the
   context, then, if needed, from its right.

Example::

    special = SpecialTokenIds.from_tokenizer(tokenizer)
    budget = AnswerBudget.for_catalog(catalog, tokenizer)
    prompt = build_prompt(tokenizer.tokenize_example(example), special, budget, max_length=1024)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsysllm.positions import part_a_intra_positions
from recsysllm.schema import TokenizedExample

# Tokens a sequence adds around a text with one span: [CLS], mask, [eos], [sop].
SPECIALS_FOR_ONE_SPAN = 4
# Answer bound of ratings ("4", "3.5") and yes/no words, and the rating generation budget.
SHORT_ANSWER_TOKENS = 8
# Default answer bound of free-text answers (explanations, review summaries).
DEFAULT_TEXT_ANSWER_TOKENS = 64


@dataclass(frozen=True)
class SpecialTokenIds:
    """The special token ids a sequence uses. ``smask``/``gmask`` are None when the
    tokenizer has none (glm-large's wordpiece vocabulary)."""

    cls: int
    eos: int
    pad: int
    mask: int
    smask: int | None
    gmask: int | None
    sop: int
    eop: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> SpecialTokenIds:
        """Reads ``cls_token_id`` ... ``eop_token_id`` from a GLMTokenizer-like object."""

        def optional(name: str) -> int | None:
            # A wordpiece GLMTokenizer raises for [sMASK]/[gMASK] (ARCHITECTURE.md);
            # only the modes and answers that need them are refused.
            try:
                return getattr(tokenizer, name)
            except ValueError:
                return None

        return cls(
            cls=tokenizer.cls_token_id,
            eos=tokenizer.eos_token_id,
            pad=tokenizer.pad_token_id,
            mask=tokenizer.mask_token_id,
            smask=optional("smask_token_id"),
            gmask=optional("gmask_token_id"),
            sop=tokenizer.sop_token_id,
            eop=tokenizer.eop_token_id,
        )


@dataclass(frozen=True)
class AnswerBudget:
    """Answer tokens reserved per answer type; never the gold answer's own length.

    Attributes:
        item: tokens of the longest catalog item (item answers).
        short: rating and yes/no answers.
        text: free-text answers (explanation, review summary).
    """

    item: int = 32
    short: int = SHORT_ANSWER_TOKENS
    text: int = DEFAULT_TEXT_ANSWER_TOKENS

    def __post_init__(self) -> None:
        for name in ("item", "short", "text"):
            if getattr(self, name) < 1:
                raise ValueError(f"AnswerBudget.{name}: must be >= 1, got {getattr(self, name)}")

    @classmethod
    def for_catalog(
        cls, catalog: Any, tokenizer: Any, text: int = DEFAULT_TEXT_ANSWER_TOKENS
    ) -> AnswerBudget:
        """The bound of a catalog: ``item`` = token count of its longest item title."""
        longest = max(len(tokenizer.encode_entity(key)) for key in catalog.item_keys)
        return cls(item=longest, text=text)

    def tokens_for(self, answer_type: str | None, answer_mask: str | None) -> int:
        """Reserved tokens for an answer of this type (untyped: [gMASK] text or an item)."""
        if answer_type == "item":
            return self.item
        if answer_type in ("rating", "yesno"):
            return self.short
        if answer_type == "text" or (answer_type is None and answer_mask == "gmask"):
            return self.text
        return self.item


@dataclass
class PromptInputs:
    """Part A of a task example for generation: ``[CLS] ... mask ... [eos]``.

    The generation module appends [sop] (inter ``mask_inter``, intra 1) and decodes,
    with :class:`positions.IntraPositionTracker` for the generated tokens.
    ``truncated`` says whether history (or other context) was dropped to fit.
    """

    input_ids: list[int]
    inter: list[int]
    intra: list[int]
    mask_position: int  # index in input_ids of the mask token to fill
    mask_inter: int  # inter-position of that mask token (every generated token takes it)
    truncated: bool = False


class PromptTooLongError(ValueError):
    """A task example that cannot fit ``max_length`` without hiding what it must show.

    Attributes:
        template_id: the template of the (first) example that does not fit.
        needed: tokens that example needs.
        max_length: the configured length.
    """

    def __init__(self, message: str, template_id: str, needed: int, max_length: int) -> None:
        super().__init__(message)
        self.template_id = template_id
        self.needed = needed
        self.max_length = max_length

    @classmethod
    def of(
        cls, where: str, template_id: str, needed: int, max_length: int, why: str
    ) -> PromptTooLongError:
        return cls(
            f"{where}: template {template_id!r} needs {needed} tokens ({why}) but "
            f"max_length is {max_length}",
            template_id,
            needed,
            max_length,
        )


@dataclass
class TaskText:
    """The kept text of a task example (indices into its input_ids) and its answer.

    Attributes:
        left: kept context tokens before the answer, in order.
        right: kept context tokens after the answer.
        answer: token ids of the answer (cut to the budget for free text).
        answer_units: their unit ids.
        mask_id: the token that hides the answer in Part A.
        truncated: whether any context token was dropped.
    """

    left: list[int]
    right: list[int]
    answer: list[int]
    answer_units: list[int]
    mask_id: int
    truncated: bool


def task_mask_id(example: TokenizedExample, special: SpecialTokenIds) -> int:
    """[MASK] or [gMASK], as the example's ``answer_mask`` asks."""
    if example.answer_mask == "gmask":
        if special.gmask is None:
            raise ValueError(
                f"{example.describe()}: answer_mask 'gmask' but the tokenizer has no [gMASK]"
            )
        return special.gmask
    return special.mask


def plan_task_text(
    example: TokenizedExample,
    special: SpecialTokenIds,
    budget: AnswerBudget,
    max_length: int,
    *,
    check_answer: bool = True,
) -> TaskText:
    """Which tokens of a task example are kept, decided without looking at the answer.

    Only the answer's *position* (where its mask goes) and the context tokens are read;
    the answer's tokens and length do not enter the decision. ``check_answer=False``
    (inference, where the answer is a placeholder) skips the check that the answer
    fits its budget.

    Raises:
        PromptTooLongError: a prompt with candidates that do not fit, or a context that
            cannot fit even with everything droppable dropped.
        ValueError: a non-text answer longer than its budget (the budget is wrong).
    """
    if example.answer_span is None:
        raise ValueError(f"{example.describe()}: a task example needs an answer_span")
    source = example.example
    answer_type = source.answer_type if source is not None else None
    reserved = budget.tokens_for(answer_type, example.answer_mask)
    where = example.describe()
    template_id = source.template_id if source is not None else ""
    if reserved + SPECIALS_FOR_ONE_SPAN > max_length:
        raise PromptTooLongError.of(
            where,
            template_id,
            reserved + SPECIALS_FOR_ONE_SPAN,
            max_length,
            "the answer budget alone",
        )
    ids, units = example.input_ids, example.unit_ids
    n = len(ids)
    start, end = example.answer_span
    answer = list(ids[start:end])
    answer_units = list(units[start:end])
    if check_answer and len(answer) > reserved:
        if answer_type == "text" or (answer_type is None and example.answer_mask == "gmask"):
            answer, answer_units = answer[:reserved], answer_units[:reserved]
        else:
            raise ValueError(
                f"{where}: the answer has {len(answer)} tokens, more than the {reserved} "
                f"reserved for {answer_type or 'item'} answers (AnswerBudget)"
            )
    mask_id = task_mask_id(example, special)
    context = n - (end - start)
    excess = context + SPECIALS_FOR_ONE_SPAN + reserved - max_length
    # Kept ranges of the context (answer excluded), in text order.
    ranges = [(0, start), (end, n)]
    if excess <= 0:
        return TaskText(
            list(range(start)), list(range(end, n)), answer, answer_units, mask_id, False
        )

    history = _history_item_starts(example)
    if history is not None:
        starts, history_end = history
        # Dropping the d oldest items removes [starts[0], starts[d]) (each with its separator).
        bounds = [*starts[1:], history_end]
        dropped = [bound - starts[0] for bound in bounds]
        d = int(np.searchsorted(dropped, excess))  # first d (0-based: d + 1 items) >= excess
        cut_end = bounds[min(d, len(bounds) - 1)]
        ranges = _remove(ranges, starts[0], cut_end)
        excess -= cut_end - starts[0]
    if excess > 0 and source is not None and source.candidates:
        needed = max_length + excess
        raise PromptTooLongError.of(
            where,
            template_id,
            needed,
            max_length,
            f"{len(source.candidates)} candidates, the rest of the prompt without history "
            f"and {reserved} answer tokens",
        )
    if excess > 0:
        ranges = _drop_units(ranges, units, start, excess, where, template_id, max_length)
    left = [i for lo, hi in ranges if hi <= start for i in range(lo, hi)]
    right = [i for lo, hi in ranges if lo >= end for i in range(lo, hi)]
    return TaskText(left, right, answer, answer_units, mask_id, True)


def build_prompt(
    example: TokenizedExample, special: SpecialTokenIds, budget: AnswerBudget, max_length: int
) -> PromptInputs:
    """Part A of a task example for generation, exactly the Part A training builds.

    Args:
        example: a task example; its answer tokens (gold or a placeholder) are not read.
        special: the tokenizer's special ids.
        budget: the answer bound (the same as training's).
        max_length: the training sequence length.
    """
    plan = plan_task_text(example, special, budget, max_length, check_answer=False)
    ids, units = example.input_ids, example.unit_ids
    part_a = [special.cls, *(ids[i] for i in plan.left), plan.mask_id]
    a_units = [-1, *(units[i] for i in plan.left), -1]
    mask_position = len(part_a) - 1
    part_a += [ids[i] for i in plan.right] + [special.eos]
    a_units += [units[i] for i in plan.right] + [-1]
    return PromptInputs(
        input_ids=part_a,
        inter=list(range(len(part_a))),
        intra=part_a_intra_positions(a_units),
        mask_position=mask_position,
        mask_inter=mask_position,
        truncated=plan.truncated,
    )


def check_prompts_fit(
    examples: Iterable[TokenizedExample],
    special: SpecialTokenIds,
    budget: AnswerBudget,
    max_length: int,
    where: str = "",
) -> dict[str, int]:
    """Fails early (one error for all templates) when some prompt cannot fit.

    Returns:
        template id -> number of its examples whose prompt is truncated.

    Raises:
        PromptTooLongError: naming every template that cannot fit, with the largest
            length one of its examples needs and ``max_length``.
    """
    truncated: dict[str, int] = {}
    failures: dict[str, int] = {}
    for example in examples:
        template_id = example.example.template_id if example.example is not None else ""
        try:
            plan = plan_task_text(example, special, budget, max_length, check_answer=False)
        except PromptTooLongError as error:
            failures[template_id] = max(failures.get(template_id, 0), error.needed)
            continue
        truncated[template_id] = truncated.get(template_id, 0) + int(plan.truncated)
    if failures:
        details = "; ".join(
            f"template {t!r} needs {needed} tokens" for t, needed in sorted(failures.items())
        )
        first = sorted(failures)[0]
        raise PromptTooLongError(
            f"{where or 'prompts'}: {details}, but max_length is {max_length} "
            "(candidate lists are never truncated); raise data.max_length, use fewer "
            "candidates (data.num_negatives) or leave these templates out",
            first,
            failures[first],
            max_length,
        )
    return truncated


# ------------------------------------------------------------------ helpers


def _history_item_starts(example: TokenizedExample) -> tuple[list[int], int] | None:
    """Token index where each history item starts, and where the last one ends."""
    source = example.example
    if source is None or source.history_segments is None or not source.history:
        return None
    first_segment, end_segment = source.history_segments
    first_unit = sum(1 for s in source.segments[:first_segment] if s.is_entity)
    count = sum(1 for s in source.segments[first_segment:end_segment] if s.is_entity)
    if count == 0:
        return None
    units = np.asarray(example.unit_ids, dtype=np.int64)
    is_first = np.concatenate(([True], units[1:] != units[:-1]))
    inside = (units >= first_unit) & (units < first_unit + count)
    starts = np.flatnonzero(inside & is_first).tolist()
    history_end = int(np.flatnonzero(inside)[-1]) + 1
    return starts, history_end


def _remove(ranges: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """``ranges`` minus ``[lo, hi)``."""
    kept = []
    for a, b in ranges:
        if b <= lo or a >= hi:
            kept.append((a, b))
            continue
        if a < lo:
            kept.append((a, lo))
        if b > hi:
            kept.append((hi, b))
    return kept


def _drop_units(
    ranges: list[tuple[int, int]],
    units: Sequence[int],
    answer_start: int,
    excess: int,
    where: str,
    template_id: str,
    max_length: int,
) -> list[tuple[int, int]]:
    """Drops ``excess`` tokens of whole units: from the left of the context, then its right."""
    kept = np.asarray([i for lo, hi in ranges for i in range(lo, hi)], dtype=np.int64)
    kept_units = np.asarray(units, dtype=np.int64)[kept]
    length = len(kept)
    split = int(np.searchsorted(kept, answer_start))  # context tokens before the answer
    cut = np.ones(length + 1, dtype=bool)
    cut[1:length] = (kept_units[1:] < 0) | (kept_units[1:] != kept_units[:-1])
    cut[split] = True
    cuts = np.flatnonzero(cut)
    lo = min(int(cuts[np.searchsorted(cuts, excess)]), split)
    hi = length
    remaining = excess - lo
    if remaining > 0:
        hi = int(cuts[np.searchsorted(cuts, length - remaining, side="right") - 1])
        if hi < split:
            raise PromptTooLongError.of(
                where, template_id, max_length + remaining, max_length, "the context"
            )
    return [(int(i), int(i) + 1) for i in kept[lo:hi]]
