"""k-core filtering, chronological leave-one-out with a fixed tie-break, stored direct candidates."""

from __future__ import annotations

import json

import datasets
import pytest

from recsysllm.data.splits import build_splits, k_core_rows
from recsysllm.data.tables import RecTables


def make_tables(rows: list[tuple[str, str, int]], n_items: int | None = None) -> RecTables:
    """rows: (user, item, timestamp); items are titled "Title <item>"; no users table rows."""
    item_ids = sorted({item for _, item, _ in rows} | {f"x{i}" for i in range(n_items or 0)})
    return RecTables(
        name="toy",
        interactions=datasets.Dataset.from_dict(
            {
                "user": [u for u, _, _ in rows],
                "item": [i for _, i, _ in rows],
                "timestamp": [t for _, _, t in rows],
                "rating": [float(1 + n % 5) for n in range(len(rows))],
                "review": [""] * len(rows),
                "summary": [""] * len(rows),
            }
        ),
        items=datasets.Dataset.from_dict(
            {"item": item_ids, "title": [f"Title {i}" for i in item_ids]}
        ),
        users=datasets.Dataset.from_dict(
            {"user": []}, features=datasets.Features({"user": datasets.Value("string")})
        ),
    )


def test_k_core_iterates_until_stable():
    users = ["a", "a", "b", "b", "c", "c"]
    items = ["x", "y", "x", "y", "y", "z"]
    # Round 1 drops (c, z): item z has 1 row. Then user c has 1 row: round 2 drops (c, y).
    assert k_core_rows(users, items, 2) == [0, 1, 2, 3]
    assert k_core_rows(users, items, 1) == list(range(6))
    assert k_core_rows(users, items, 3) == []


def test_build_splits_applies_k_core_to_users_and_items():
    rows = [(u, i, t) for t, (u, i) in enumerate(
        [("a", "x"), ("a", "y"), ("a", "w"), ("b", "x"), ("b", "y"), ("b", "w"),
         ("c", "x"), ("c", "y"), ("c", "w"), ("c", "v"), ("d", "v"), ("d", "x")]
    )]  # fmt: skip
    splits = build_splits(make_tables(rows), k=3, num_negatives=0)
    # v has 2 rows and d has 2 rows: both go; a, b, c keep x, y, w.
    assert splits.users == ("a", "b", "c")
    assert {e.item for seq in splits.sequences.values() for e in seq} == {
        "Title x",
        "Title y",
        "Title w",
    }
    assert sorted(splits.tables.items["item"]) == ["w", "x", "y"]
    assert splits.tables.interactions.num_rows == 9
    assert splits.tables.notes["interactions dropped by 3-core"] == 3


def test_leave_one_out_orders_ties_by_row_index():
    # Row order:         0        1        2        3        4
    rows = [("u", "a", 5), ("u", "b", 3), ("u", "c", 3), ("u", "d", 9), ("u", "e", 3)]
    splits = build_splits(make_tables(rows), k=1, num_negatives=0)
    # Sorted by (timestamp, row): b(3,1) c(3,2) e(3,4) a(5,0) d(9,3).
    assert [e.item for e in splits.train["u"]] == ["Title b", "Title c", "Title e"]
    assert splits.valid["u"].item == "Title a"
    assert splits.test["u"].item == "Title d"
    assert [e.timestamp for e in splits.sequences["u"]] == [3, 3, 3, 5, 9]


def test_tie_break_is_deterministic_and_uses_row_order():
    # All five events share one timestamp: the row order alone decides, every time.
    rows = [("u", item, 7) for item in "qwert"]
    first = build_splits(make_tables(rows), k=1, num_negatives=0)
    again = build_splits(make_tables(rows), k=1, num_negatives=0)
    assert [e.item for e in first.sequences["u"]] == [f"Title {c}" for c in "qwert"]
    assert first.sequences == again.sequences
    swapped = build_splits(make_tables(rows[::-1]), k=1, num_negatives=0)
    assert [e.item for e in swapped.sequences["u"]] == [f"Title {c}" for c in "trewq"]


def test_missing_timestamps_keep_row_order_and_short_users_are_dropped():
    rows = [("u", "c", -1), ("u", "a", -1), ("u", "b", -1), ("v", "a", -1), ("v", "b", -1)]
    splits = build_splits(make_tables(rows), k=1, num_negatives=0)
    assert splits.users == ("u",)  # v has 2 events: no train event left for leave-one-out
    assert [e.item for e in splits.sequences["u"]] == ["Title c", "Title a", "Title b"]
    assert splits.tables.notes["users with < 3 interactions dropped"] == 1


def test_duplicate_interactions_keep_the_first_and_are_counted():
    rows = [("u", "a", 1), ("u", "b", 2), ("u", "a", 3), ("u", "c", 4), ("u", "d", 5)]
    splits = build_splits(make_tables(rows), k=1, num_negatives=0)
    assert [(e.item, e.timestamp) for e in splits.sequences["u"]] == [
        ("Title a", 1), ("Title b", 2), ("Title c", 4), ("Title d", 5)
    ]  # fmt: skip
    assert splits.tables.notes["duplicate interactions dropped"] == 1


def test_unknown_item_names_row_and_field():
    tables = make_tables([("u", "a", 1), ("u", "b", 2), ("u", "c", 3)])
    tables.interactions = tables.interactions.map(
        lambda r, i: {"item": "zz" if i == 1 else r["item"]}, with_indices=True
    )
    with pytest.raises(
        ValueError, match=r"interactions row 1: field 'item' 'zz' is not in the items table"
    ):
        build_splits(tables, k=1)


def _candidate_tables() -> RecTables:
    # 30 users x 6 events cover all 150 items (the pool is the items that survive filtering).
    rows = [(f"u{u}", f"x{(u * 5 + j) % 150}", 100 * j) for u in range(30) for j in range(6)]
    return make_tables(rows, n_items=150)


def test_direct_candidates_are_100_distinct_uninteracted_and_reproducible(tmp_path):
    splits = build_splits(_candidate_tables(), k=1, seed=3)
    again = build_splits(_candidate_tables(), k=1, seed=3)
    other_seed = build_splits(_candidate_tables(), k=1, seed=4)
    assert splits.candidates == again.candidates
    assert splits.candidates != other_seed.candidates
    for split in ("valid", "test"):
        for user in splits.users:
            candidates = splits.candidates[split][user]
            target = splits.valid[user] if split == "valid" else splits.test[user]
            assert len(candidates) == 100 and len(set(candidates)) == 100
            assert candidates[0] == target.item
            assert not set(candidates[1:]) & {e.item for e in splits.sequences[user]}

    path = tmp_path / "candidates.json"
    splits.save_candidates(path)
    other_seed.load_candidates(path)
    assert other_seed.candidates == splits.candidates

    payload = json.loads(path.read_text())
    user = splits.users[0]
    payload["test"][user][1] = splits.sequences[user][0].item  # an interacted "negative"
    path.write_text(json.dumps(payload))
    with pytest.raises(
        ValueError, match=rf"field 'test', user '{user}': negatives the user interacted with"
    ):
        other_seed.load_candidates(path)


def test_too_few_items_for_negatives_is_a_clear_error():
    rows = [(f"u{u}", f"x{j}", j) for u in range(3) for j in range(5)]
    with pytest.raises(
        ValueError, match=r"direct candidates of user 'u0' \(valid\): only 0 items are left"
    ):
        build_splits(make_tables(rows), k=1, num_negatives=99)
