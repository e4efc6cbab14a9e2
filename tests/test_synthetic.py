"""recsysllm.data.synthetic: the generated long-title category at small sizes."""

from __future__ import annotations

from collections import Counter

import pytest

from recsysllm.data.synthetic import long_title_records


@pytest.mark.parametrize(
    ("num_items", "num_families", "num_users"),
    [
        (40, 3, 60),  # some departments get no item (an empty index once broke this)
        (12, 2, 20),  # fewer items than the longest history (30)
    ],
)
def test_small_catalogs_generate_valid_histories(num_items, num_families, num_users):
    reviews, meta = long_title_records(
        seed=0, num_items=num_items, num_families=num_families, num_users=num_users
    )
    asins = [m["asin"] for m in meta]
    assert len(asins) == len(set(asins)) == num_items
    assert all(m["title"] and m["brand"] for m in meta)
    assert {r["asin"] for r in reviews} <= set(asins)
    per_user = Counter(r["reviewerID"] for r in reviews)
    assert len(per_user) == num_users
    assert all(5 <= n <= min(30, num_items) for n in per_user.values())
    # Nobody reviews an item twice.
    assert len({(r["reviewerID"], r["asin"]) for r in reviews}) == len(reviews)
