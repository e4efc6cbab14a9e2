"""How concentrated a system's recommendations are, from its top-k lists alone.

A model can score well on nothing but one popular item, or collapse onto a family of
items whose titles share a long, well-predicted prefix (one brand's product line):
summed token log-probabilities make such a prefix nearly free. These numbers show it,
for any row of a results table (model, SASRec, popularity, ...):

- ``coverage``: distinct recommended items / catalog size.
- ``top item share``: slots taken by the most-recommended item / all slots.
- ``top 1% share``: slots taken by the ceil(1% of the catalog) most-recommended items
  / all slots.
- ``largest prefix group share``: slots taken by the largest *prefix group* / all
  slots. A prefix group is the set of items whose titles start with the same first
  ``prefix_words`` words (:func:`title_prefix`: whitespace-separated, case-folded; a
  title with fewer words is its own prefix). Words, not tokens, so the number does
  not depend on the backbone's tokenizer; with 3 words "Sony WH-1000XM4 Wireless ..."
  and "Sony WH-1000XM4 Wireless ..., Silver" fall in one group, as a brand's product
  line does, while different MovieLens titles rarely share three words.
- ``Gini``: Gini coefficient of the recommendation counts over ALL catalog items
  (never-recommended items count 0): 0 when every item is recommended equally often,
  (n - 1) / n when one item takes every slot.

A slot is one position of one top-k list; every list may have its own length.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

DEFAULT_PREFIX_WORDS = 3
DEFAULT_TOP_FRACTION = 0.01


def recommendation_counts(lists: Sequence[Sequence[str]]) -> Counter[str]:
    """Item key -> number of slots it takes over all lists."""
    counts: Counter[str] = Counter()
    for ranked in lists:
        counts.update(ranked)
    return counts


def _slots(lists: Sequence[Sequence[str]]) -> int:
    return sum(len(ranked) for ranked in lists)


def catalog_coverage(lists: Sequence[Sequence[str]], catalog_size: int) -> float:
    """Distinct recommended items / ``catalog_size``.

    Example:
        >>> catalog_coverage([["a", "b"], ["a", "c"]], catalog_size=10)
        0.3
    """
    _check_catalog(lists, catalog_size)
    return len(recommendation_counts(lists)) / catalog_size


def top_item_share(lists: Sequence[Sequence[str]]) -> float:
    """Share of all slots taken by the single most-recommended item (0.0 without slots).

    Example:
        >>> top_item_share([["a", "b"], ["a", "c"]])
        0.5
    """
    counts = recommendation_counts(lists)
    return max(counts.values()) / _slots(lists) if counts else 0.0


def top_fraction_share(
    lists: Sequence[Sequence[str]], catalog_size: int, fraction: float = DEFAULT_TOP_FRACTION
) -> float:
    """Share of all slots taken by the ceil(``fraction`` * catalog) most-recommended items.

    Example:
        >>> top_fraction_share([["a", "b"], ["a", "c"]], catalog_size=200)  # top 2 items
        0.75
    """
    _check_catalog(lists, catalog_size)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    slots = _slots(lists)
    if not slots:
        return 0.0
    top = math.ceil(fraction * catalog_size)
    return sum(count for _, count in recommendation_counts(lists).most_common(top)) / slots


def title_prefix(title: str, words: int = DEFAULT_PREFIX_WORDS) -> str:
    """The first ``words`` whitespace-separated words of a title, case-folded.

    Example:
        >>> title_prefix("Acme Turbo Blender 3000, Red", words=3)
        'acme turbo blender'
    """
    if words < 1:
        raise ValueError(f"words must be >= 1, got {words}")
    return " ".join(title.casefold().split()[:words])


def largest_prefix_group_share(
    lists: Sequence[Sequence[str]], words: int = DEFAULT_PREFIX_WORDS
) -> tuple[float, str]:
    """Share of all slots taken by the items of the largest prefix group, and its prefix.

    Items are grouped by :func:`title_prefix` of their key (the key is the title;
    a disambiguated key "Title [id 7]" groups with its title's prefix). Ties between
    groups go to the alphabetically first prefix.

    Example:
        >>> largest_prefix_group_share([["Acme Pro X", "Acme Pro Y"], ["Zed", "Acme Pro X"]], 2)
        (0.75, 'acme pro')
    """
    slots = _slots(lists)
    if not slots:
        return 0.0, ""
    groups: Counter[str] = Counter()
    for item, count in recommendation_counts(lists).items():
        groups[title_prefix(item, words)] += count
    prefix, count = min(groups.items(), key=lambda pair: (-pair[1], pair[0]))
    return count / slots, prefix


def gini(lists: Sequence[Sequence[str]], catalog_size: int) -> float:
    """Gini coefficient of recommendation counts over all ``catalog_size`` items.

    With counts sorted ascending x_1 <= ... <= x_n (n = catalog size, unrecommended
    items 0): G = 2 * sum_i i * x_i / (n * sum_i x_i) - (n + 1) / n. 0.0 without slots.

    Example:
        >>> gini([["a"], ["a"]], catalog_size=2)  # counts (0, 2): 2*2*2/(2*2) - 3/2
        0.5
    """
    _check_catalog(lists, catalog_size)
    counts = sorted(recommendation_counts(lists).values())
    total = sum(counts)
    if not total:
        return 0.0
    # The catalog_size - len(counts) zero counts come first and add nothing to the sum.
    offset = catalog_size - len(counts)
    weighted = sum((offset + rank) * count for rank, count in enumerate(counts, start=1))
    return 2 * weighted / (catalog_size * total) - (catalog_size + 1) / catalog_size


def diversity_metrics(
    lists: Sequence[Sequence[str]],
    catalog_size: int,
    *,
    prefix_words: int = DEFAULT_PREFIX_WORDS,
    top_fraction: float = DEFAULT_TOP_FRACTION,
) -> dict[str, float | str]:
    """Every number of this module for one system's top-k lists (report columns).

    Returns:
        {"coverage", "top item share", "top 1% share" (named after ``top_fraction``),
        "largest prefix group share", "largest prefix group" (its prefix), "Gini",
        "lists", "slots"}.
    """
    group_share, group = largest_prefix_group_share(lists, prefix_words)
    return {
        "coverage": catalog_coverage(lists, catalog_size),
        "top item share": top_item_share(lists),
        f"top {top_fraction:.0%} share": top_fraction_share(lists, catalog_size, top_fraction),
        "largest prefix group share": group_share,
        "largest prefix group": group,
        "Gini": gini(lists, catalog_size),
        "lists": len(lists),
        "slots": _slots(lists),
    }


def _check_catalog(lists: Sequence[Sequence[str]], catalog_size: int) -> None:
    distinct = len(recommendation_counts(lists))
    if catalog_size < max(distinct, 1):
        raise ValueError(
            f"catalog_size {catalog_size} is smaller than the {distinct} distinct recommended items"
        )
