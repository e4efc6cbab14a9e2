"""Diversity of top-k lists: hand-computed coverage, concentration shares and Gini."""

from __future__ import annotations

import pytest

from recsysllm.evaluation.diversity import (
    catalog_coverage,
    diversity_metrics,
    gini,
    largest_prefix_group_share,
    title_prefix,
    top_fraction_share,
    top_item_share,
)

# 4 lists, 12 slots. Counts: "Acme Pro X" 4, "Acme Pro Y" 3, "Beta" 2, "Acme Lite" 1,
# "Gamma One" 1, "Delta" 1; 6 distinct items.
LISTS = [
    ["Acme Pro X", "Acme Pro Y", "Beta"],
    ["Acme Pro X", "Acme Pro Y", "Gamma One"],
    ["Acme Pro X", "Beta", "Acme Lite"],
    ["Acme Pro X", "Acme Pro Y", "Delta"],
]


def test_coverage_and_top_item_share():
    assert catalog_coverage(LISTS, catalog_size=10) == pytest.approx(6 / 10)
    assert top_item_share(LISTS) == pytest.approx(4 / 12)


def test_top_fraction_share():
    # 1% of 200 items = 2 items: "Acme Pro X" and "Acme Pro Y", 7 of 12 slots.
    assert top_fraction_share(LISTS, catalog_size=200) == pytest.approx(7 / 12)
    # 1% of 250 rounds up to 3 items: + "Beta".
    assert top_fraction_share(LISTS, catalog_size=250) == pytest.approx(9 / 12)
    # 1% of 10 items rounds up to one item.
    assert top_fraction_share(LISTS, catalog_size=10) == pytest.approx(4 / 12)
    assert top_fraction_share(LISTS, catalog_size=10, fraction=1.0) == 1.0


def test_prefix_groups():
    assert title_prefix("  Acme   PRO x 3000 ", words=2) == "acme pro"
    assert title_prefix("Beta", words=3) == "beta"
    # Two words: "acme pro" holds X and Y (7 slots); one word: "acme" adds Lite (8).
    assert largest_prefix_group_share(LISTS, words=2) == (pytest.approx(7 / 12), "acme pro")
    assert largest_prefix_group_share(LISTS, words=1) == (pytest.approx(8 / 12), "acme")
    # Three words: every item is its own group; the top item wins.
    assert largest_prefix_group_share(LISTS, words=3) == (pytest.approx(4 / 12), "acme pro x")
    # A tie between groups goes to the alphabetically first prefix.
    assert largest_prefix_group_share([["b x"], ["a y"]], words=1) == (0.5, "a")


def test_gini_hand_computed():
    # Catalog of 8: counts sorted 0, 0, 1, 1, 1, 2, 3, 4 (sum 12).
    # sum i * x_i = 3 + 4 + 5 + 12 + 21 + 32 = 77; G = 2 * 77 / (8 * 12) - 9 / 8.
    assert gini(LISTS, catalog_size=8) == pytest.approx(2 * 77 / 96 - 9 / 8)
    # Equal counts over the whole catalog: 0; one item everywhere: (n - 1) / n.
    assert gini([["a", "b"], ["b", "a"]], catalog_size=2) == pytest.approx(0.0)
    assert gini([["a"]] * 5, catalog_size=4) == pytest.approx(3 / 4)


def test_diversity_metrics_row():
    row = diversity_metrics(LISTS, catalog_size=8, prefix_words=2)
    assert row == {
        "coverage": pytest.approx(6 / 8),
        "top item share": pytest.approx(4 / 12),
        "top 1% share": pytest.approx(4 / 12),
        "largest prefix group share": pytest.approx(7 / 12),
        "largest prefix group": "acme pro",
        "Gini": pytest.approx(2 * 77 / 96 - 9 / 8),
        "lists": 4,
        "slots": 12,
    }


def test_empty_and_bad_input():
    assert top_item_share([]) == 0.0
    assert top_fraction_share([[]], catalog_size=5) == 0.0
    assert gini([], catalog_size=5) == 0.0
    assert largest_prefix_group_share([]) == (0.0, "")
    with pytest.raises(ValueError, match="catalog_size 2"):
        catalog_coverage(LISTS, catalog_size=2)
    with pytest.raises(ValueError, match="fraction"):
        top_fraction_share(LISTS, catalog_size=10, fraction=0.0)
    with pytest.raises(ValueError, match="words"):
        title_prefix("a b", words=0)
