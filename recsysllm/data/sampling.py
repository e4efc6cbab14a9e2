"""Behaviour sampling (DESIGN.md section 3) and the history budget.

For an example whose target happens at time t, with a budget of N history items:

1. Only the user's events *strictly before* t are candidates (never anything at or
   after t, ties included).
2. They fall into three windows by age ``t - timestamp``: short-term
   (age <= ``short_window_days``), medium-term (age <= ``medium_window_days``) and
   long-term (older). When timestamps are missing (-1) the windows are shares of
   the prior events instead: the most recent ``short_fraction`` (20%), the next
   ``medium_fraction`` (40%), the rest.
3. Quotas: round(0.6N) short, round(0.3N) medium (half-up rounding, capped so
   their sum is at most N) and the long-term quota takes what is left of N (this
   equals round(0.1N) up to rounding and keeps the total exactly N).
4. Each window gives its most recent events first. Unused quota flows on:
   short -> medium -> long. Quota the long window cannot use flows back to the
   medium window, then to the short one (most recent first again), so the budget
   is filled whenever the user has at least N prior events.
5. The chosen events are returned in chronological order.

Sampling is deterministic ("most recent first"), so it needs no random generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

SECONDS_PER_DAY = 86_400

# Tokens kept free of history in every sequence, see history_budget().
DEFAULT_RESERVED_TOKENS = 160


@dataclass(frozen=True)
class SamplingConfig:
    """Window bounds and shares of behaviour sampling.

    Attributes:
        short_ratio: share of the budget taken from the short-term window.
        medium_ratio: share of the budget taken from the medium-term window.
        long_ratio: share of the budget taken from the long-term window.
        short_window_days: age bound (days before the target) of the short-term window.
        medium_window_days: age bound of the medium-term window (older is long-term).
        short_fraction: short-term share of the prior events when timestamps are missing.
        medium_fraction: medium-term share of the prior events when timestamps are missing.
    """

    short_ratio: float = 0.6
    medium_ratio: float = 0.3
    long_ratio: float = 0.1
    short_window_days: float = 7.0
    medium_window_days: float = 90.0
    short_fraction: float = 0.2
    medium_fraction: float = 0.4

    def __post_init__(self) -> None:
        ratios = (self.short_ratio, self.medium_ratio, self.long_ratio)
        if min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
            raise ValueError(
                f"SamplingConfig: short/medium/long ratios {ratios} must be >= 0 and sum to 1"
            )
        if not 0 <= self.short_window_days <= self.medium_window_days:
            raise ValueError(
                f"SamplingConfig: need 0 <= short_window_days ({self.short_window_days}) "
                f"<= medium_window_days ({self.medium_window_days})"
            )
        fractions = (self.short_fraction, self.medium_fraction)
        if min(fractions) < 0 or sum(fractions) > 1.0 + 1e-9:
            raise ValueError(
                f"SamplingConfig: short/medium fractions {fractions} must be >= 0 and sum to <= 1"
            )


def round_half_up(value: float) -> int:
    """Round to the nearest integer, .5 up (Python's round() rounds .5 to even)."""
    return math.floor(value + 0.5 + 1e-9)


def window_quotas(budget: int, config: SamplingConfig) -> tuple[int, int, int]:
    """(short, medium, long) quotas of a budget; they always sum to ``budget``.

    Example:
        >>> window_quotas(10, SamplingConfig())
        (6, 3, 1)
        >>> window_quotas(5, SamplingConfig())
        (3, 2, 0)
    """
    short = min(round_half_up(config.short_ratio * budget), budget)
    medium = min(round_half_up(config.medium_ratio * budget), budget - short)
    return short, medium, budget - short - medium


def split_windows(
    timestamps: Sequence[int], reference_time: int | None, config: SamplingConfig
) -> tuple[list[int], list[int], list[int]]:
    """Indices of the short-, medium- and long-term windows (each chronological).

    Args:
        timestamps: the user's prior events in chronological order (-1 = unknown).
        reference_time: the target's time; events at or after it are left out of
            every window. ``None``: no target (windows are measured from the latest
            event and nothing is left out).
        config: window bounds.

    Without timestamps (``reference_time`` is -1 or any event's is -1) the events are
    all taken as prior (the caller passes only events before the target) and the
    windows are the fraction shares of their count.
    """
    timed = all(ts >= 0 for ts in timestamps) and (reference_time is None or reference_time >= 0)
    if not timed:
        count = len(timestamps)
        short_start = count - round_half_up(config.short_fraction * count)
        medium_start = count - round_half_up(
            (config.short_fraction + config.medium_fraction) * count
        )
        medium_start = max(0, min(medium_start, short_start))
        return (
            list(range(short_start, count)),
            list(range(medium_start, short_start)),
            list(range(medium_start)),
        )
    if reference_time is None:
        prior = list(range(len(timestamps)))
        reference_time = max(timestamps, default=0)
    else:
        prior = [index for index, ts in enumerate(timestamps) if ts < reference_time]
    short_bound = config.short_window_days * SECONDS_PER_DAY
    medium_bound = config.medium_window_days * SECONDS_PER_DAY
    short, medium, long = [], [], []
    for index in prior:
        age = reference_time - timestamps[index]
        (short if age <= short_bound else medium if age <= medium_bound else long).append(index)
    return short, medium, long


def sample_history(
    timestamps: Sequence[int],
    target_time: int | None,
    budget: int,
    config: SamplingConfig | None = None,
) -> list[int]:
    """Choose up to ``budget`` prior events: 60% short-, 30% medium-, 10% long-term.

    Args:
        timestamps: the user's events before the target, in chronological order
            (-1 = unknown). Events with a timestamp at or after ``target_time`` are
            never chosen (ties with the target included).
        target_time: the target's time (-1 unknown; ``None`` for a document without
            a target, whose windows are measured from its latest event).
        budget: N, the number of history items the prompt has room for.
        config: window bounds and shares (defaults: :class:`SamplingConfig`).

    Returns:
        Indices into ``timestamps`` of the chosen events, in chronological order.

    Example:
        >>> day = 86_400
        >>> sample_history([0, 50 * day, 95 * day, 96 * day, 97 * day], 100 * day, 3)
        [1, 3, 4]
    """
    config = config or SamplingConfig()
    if budget < 0:
        raise ValueError(f"history budget must be >= 0, got {budget}")
    known = [ts for ts in timestamps if ts >= 0]
    if any(later < earlier for earlier, later in zip(known, known[1:], strict=False)):
        raise ValueError("sample_history: timestamps are not in chronological order")
    # Most recent first inside each window.
    windows = [list(reversed(window)) for window in split_windows(timestamps, target_time, config)]
    chosen: list[int] = []
    spare = 0
    for window, quota in zip(windows, window_quotas(budget, config), strict=True):
        wanted = quota + spare
        chosen += window[:wanted]
        spare = wanted - len(window[:wanted])
        del window[:wanted]
    for window in (windows[1], windows[0]):  # the long window's spare flows back
        chosen += window[:spare]
        spare -= len(window[:spare])
    return sorted(chosen)


def history_budget(
    max_length: int,
    titles: Iterable[str],
    count_tokens: Callable[[str], int],
    *,
    reserved_tokens: int = DEFAULT_RESERVED_TOKENS,
    separator_tokens: int = 1,
    quantile: float = 0.9,
) -> int:
    """Number of history items N that fit in a sequence of ``max_length`` tokens.

    Each history item costs the ``quantile`` (default 90th percentile) of the title
    token counts plus ``separator_tokens`` for the ", " between items. The rest of
    the sequence is kept for everything that is not history: ``reserved_tokens``
    (default 160) = about 8 special tokens ([CLS], [eos], mask tokens, [sop], [eop]),
    up to ~60 tokens of template text and user profile, and up to ~90 tokens of
    answer (an item title, a rating, or a review sentence; a longer one is
    truncated by the collator). Prompts listing 100 candidates do not fit in the
    paper's 1024 tokens at any N; their history is left-truncated by the collator.

    Args:
        max_length: tokens per sequence, special tokens included.
        titles: item titles (e.g. ``catalog.item_keys``).
        count_tokens: tokens of one title as an entity, e.g.
            ``lambda title: len(tokenizer.encode_entity(title))``.
        reserved_tokens: tokens kept for everything that is not history.
        separator_tokens: tokens between two history items.
        quantile: which title length to budget for (1.0 = the longest title).

    Raises:
        ValueError: no titles, or not even one item fits.

    Example:
        >>> history_budget(200, ["a b", "c d e"], lambda t: len(t.split()), reserved_tokens=100)
        25
    """
    lengths = [count_tokens(title) for title in titles]
    if not lengths:
        raise ValueError("history_budget: no titles given")
    per_item = math.ceil(float(np.quantile(lengths, quantile))) + separator_tokens
    budget = (max_length - reserved_tokens) // per_item
    if budget < 1:
        raise ValueError(
            f"history_budget: max_length {max_length} leaves no room for one history item "
            f"({reserved_tokens} reserved tokens, {per_item} tokens per item)"
        )
    return budget
