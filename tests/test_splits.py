"""k-core filtering, chronological leave-one-out with a fixed tie-break, stored direct candidates."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from recsysllm.data.splits import EVAL_SPLITS, SPLITS, build_splits, k_core_rows, short_user_split
from recsysllm.data.tables import RecTables
from tests.conftest import rows_to_tables


def make_tables(rows: list[tuple[str, str, int]], n_items: int | None = None) -> RecTables:
    """rows: (user, item, timestamp); items are titled "Title <item>"; no users table rows."""
    item_ids = sorted({item for _, item, _ in rows} | {f"x{i}" for i in range(n_items or 0)})
    ratings = [float(1 + n % 5) for n in range(len(rows))]
    return rows_to_tables(rows, {i: f"Title {i}" for i in item_ids}, ratings)


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


def test_missing_timestamps_keep_row_order_and_short_users_are_kept_whole():
    rows = [("u", "c", -1), ("u", "a", -1), ("u", "b", -1), ("v", "a", -1), ("v", "b", -1)]
    splits = build_splits(make_tables(rows), k=1, num_negatives=0)
    assert [e.item for e in splits.sequences["u"]] == ["Title c", "Title a", "Title b"]
    # v has 2 events: too few for leave-one-out, so it sits whole in one split.
    assert splits.users == ("u", "v")
    assert splits.short_users == {"v": short_user_split(0, "v")}
    assert [e.item for e in splits.sequences["v"]] == ["Title a", "Title b"]
    counts = {s: splits.tables.notes[f"users with < 3 interactions, all in {s}"] for s in SPLITS}
    assert sorted(counts.values()) == [0, 0, 1] and counts[splits.short_users["v"]] == 1


def expected_short_split(seed: int, user: str) -> str:
    """Independent re-statement of the documented draw: BLAKE2b-64 of "seed\0user" mod 10."""
    value = int(hashlib.blake2b(f"{seed}\0{user}".encode(), digest_size=8).hexdigest(), 16)
    return {0: "valid", 1: "test"}.get(value % 10, "train")


def test_short_user_split_is_a_seeded_80_10_10_draw():
    users = [f"user{n}" for n in range(20_000)]
    for seed in (0, 7):
        drawn = [short_user_split(seed, user) for user in users]
        assert drawn == [expected_short_split(seed, user) for user in users]
        counts = Counter(drawn)
        # Binomial(20000, 0.1): sd ~42, so +-250 is ~6 sd.
        assert abs(counts["valid"] - 2000) < 250 and abs(counts["test"] - 2000) < 250
        assert counts["train"] == 20_000 - counts["valid"] - counts["test"]
    assert [short_user_split(0, u) for u in users] != [short_user_split(7, u) for u in users]


def _mixed_rows() -> list[tuple[str, str, int]]:
    """6 leave-one-out users (5 events), 40 users with 1 event and 40 with 2, 150 items."""
    rows = [(f"L{u}", f"x{5 * u + j}", 10 * j) for u in range(6) for j in range(5)]
    rows += [(f"S{u}", f"x{30 + u}", 5) for u in range(40)]
    rows += [(f"D{u}", f"x{70 + 2 * u + j}", 20 - j) for u in range(40) for j in range(2)]
    return rows


def test_short_users_go_whole_to_one_split_with_last_event_as_target():
    rows = _mixed_rows()
    splits = build_splits(make_tables(rows, n_items=150), k=1, seed=5)
    long_only = build_splits(make_tables(rows[:30]), k=1, seed=5, num_negatives=9)
    short = {u for u, _, _ in rows if not u.startswith("L")}
    assert splits.short_users == {u: expected_short_split(5, u) for u in short}
    assert set(splits.users) == {u for u, _, _ in rows}
    # Leave-one-out users are split exactly as without the short users.
    for user in long_only.users:
        assert splits.sequences[user] == long_only.sequences[user]
        assert splits.train[user] == long_only.train[user]
        assert splits.valid[user] == long_only.valid[user]
        assert splits.test[user] == long_only.test[user]
    # Every user is in train, valid or test: short users in exactly one.
    membership = {u: {s for s in SPLITS if u in splits.split_users(s)} for u in splits.users}
    for user in splits.users:
        if user in short:
            assert membership[user] == {splits.short_users[user]}
        else:
            assert membership[user] == set(SPLITS)
    assert 0 < len([u for u in short if splits.short_users[u] != "train"]) < len(short)
    for user in short:
        events = splits.sequences[user]
        # D users' two rows have timestamps 20 then 19: chronological order flips them.
        number = int(user[1:])
        expected = [f"Title x{30 + number}"]
        if user[0] == "D":
            expected = [f"Title x{71 + 2 * number}", f"Title x{70 + 2 * number}"]
        assert [e.item for e in events] == expected
        split = splits.short_users[user]
        if split == "train":
            assert (
                splits.train[user] == events
                and list(splits.train_positions(user)) == [0, 1][: len(events)]
            )
            assert user not in splits.valid and user not in splits.test
            assert all(user not in splits.candidates[s] for s in EVAL_SPLITS)
        else:
            assert user not in splits.train and len(splits.train_positions(user)) == 0
            target = getattr(splits, split)[user]
            assert target == events[-1]
            assert splits.target_index(split, user) == len(events) - 1
            other = "test" if split == "valid" else "valid"
            assert user not in getattr(splits, other) and user not in splits.candidates[other]
            with pytest.raises(ValueError, match=rf"user '{user}' .* no {other} target"):
                splits.target_index(other, user)
            candidates = splits.candidates[split][user]
            assert candidates[0] == target.item and len(set(candidates)) == 100
            assert not set(candidates[1:]) & {e.item for e in events}


def test_short_user_splits_do_not_depend_on_row_order(tmp_path):
    rows = _mixed_rows()
    splits = build_splits(make_tables(rows, n_items=150), k=1, seed=2)
    shuffled = build_splits(make_tables(rows[::-1], n_items=150), k=1, seed=2)
    assert shuffled.short_users == splits.short_users
    path = tmp_path / "candidates.json"
    splits.save_candidates(path)
    shuffled.load_candidates(path)
    assert shuffled.candidates == splits.candidates
    payload = json.loads(path.read_text())
    train_user = next(u for u, s in splits.short_users.items() if s == "train")
    payload["test"][train_user] = [splits.sequences[train_user][-1].item]
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=rf"user '{train_user}': user has no test target"):
        shuffled.load_candidates(path)


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


def test_no_item_left_for_negatives_is_a_clear_error():
    rows = [(f"u{u}", f"x{j}", j) for u in range(3) for j in range(5)]
    with pytest.raises(
        ValueError,
        match=r"user 'u0' interacted with 5 of the 5 items, leaving 0.*data.mixture.direct",
    ):
        build_splits(make_tables(rows), k=1, num_negatives=99)


def test_small_catalog_uses_every_item_left_or_refuses_when_exact(caplog):
    rows = [(f"S{u}", f"x{u}", 1) for u in range(30)]  # one event each, 30 items
    splits = build_splits(make_tables(rows), k=1, num_negatives=29)  # 29 others: enough
    evaluated = [u for u in splits.users if splits.short_users[u] != "train"]
    assert evaluated and all(
        len(splits.candidates[splits.short_users[u]][u]) == 30 for u in evaluated
    )
    with caplog.at_level("WARNING"):
        fewer = build_splits(make_tables(rows), k=1, num_negatives=99)
    assert fewer.num_negatives == 29 and fewer.tables.notes["direct negatives per list"] == 29
    assert "every direct candidate list gets 29 negatives (1-of-30)" in caplog.text
    with pytest.raises(ValueError, match=r"leaving 29 .*data.num_negatives = 99.*exact_negatives"):
        build_splits(make_tables(rows), k=1, num_negatives=99, exact_negatives=True)


def test_rows_dropped_by_dedup_and_k_core_are_summarised_at_warning_level(caplog):
    rows = [(u, i, t) for t, (u, i) in enumerate(
        [("a", "x"), ("a", "y"), ("a", "x"), ("b", "x"), ("b", "y"), ("c", "z")]
    )]  # fmt: skip
    with caplog.at_level("WARNING", logger="recsysllm.data.splits"):
        splits = build_splits(make_tables(rows), k=2, num_negatives=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    # 6 rows in; (a, x) repeated once; (c, z) falls to the 2-core; 4 kept.
    assert any(
        "6 interaction rows in, 1 duplicate (user, item) rows dropped, "
        "1 removed by the 2-core, 4 kept" in message
        for message in warnings
    ), warnings
    assert splits.tables.interactions.num_rows == 4


def test_unused_direct_family_builds_no_candidate_lists():
    """Every user interacted with every item: no negatives exist, which is fine without direct."""
    from recsysllm.config import DataArgs
    from recsysllm.data.tasks import TaskMixture
    from recsysllm.pipeline import prepare_from_tables

    rows = [(f"u{u}", f"x{j}", j) for u in range(4) for j in range(5)]
    mixture = {"rating": 1.0, "sequential": 1.0, "direct": 0.0, "pretrain": 0.0,
               "explanation": 0.0, "review": 0.0}  # fmt: skip
    data = prepare_from_tables(make_tables(rows), DataArgs(k_core=1, mixture=mixture), seed=0)
    assert data.splits.num_negatives == 0
    assert data.splits.candidates == {"valid": {}, "test": {}}
    examples = data.tasks.examples("test", ["sequential"], prompts="all", seed=0)
    assert examples and all(not e.candidates for e in examples)
    train = data.tasks.training_examples(TaskMixture(mixture, 20), seed=0, epoch=0)
    assert len(train) == 20 and all(not e.candidates for e in train)
    with pytest.raises(ValueError, match="data.mixture.direct"):
        prepare_from_tables(make_tables(rows), DataArgs(k_core=1), seed=0)
