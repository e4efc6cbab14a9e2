"""k-core filtering, chronological leave-one-out splits and stored direct candidates.

Rules (DESIGN.md section 8):

- Duplicate (user, item) interactions keep their first occurrence (in the order
  below); later ones are dropped and counted in ``tables.notes``, so a target item
  never also appears in its own history.
- k-core: users and items with fewer than ``k`` interactions are dropped,
  repeatedly, until every remaining user and item has at least ``k``.
- Order of a user's events: by ``(timestamp, row index in the interactions
  table)``. The row index is the fixed tie-break for equal timestamps (frequent in
  MovieLens-100K); without timestamps (-1) the row order alone decides.
- Leave-one-out per user: last event = test, second-last = valid, the rest = train.
- Short users: a user with 1 or 2 events after filtering (only possible for k < 3;
  e.g. the clothing reviews, one review per user) cannot be split leave-one-out and
  goes WHOLE to one split, drawn from a hash of ``(seed, user id)`` (see
  :func:`short_user_split`): 80% train, 10% valid, 10% test, independent of the
  order of the data and of the other users. A valid/test short user's target is
  their last event, with their earlier events (possibly none) as history; every
  event of a train short user is a training target.
- Direct candidates: for each user and split valid/test with a target there, the target plus
  ``num_negatives`` distinct items the user never interacted with in any split,
  drawn with ``numpy.random.default_rng(seed)`` over users in sorted order and
  stored (target first) so every evaluation sees the same lists. On a small catalog
  where some user has fewer than ``num_negatives`` items left, every list gets the
  largest count all users can fill (recorded as ``RecSplits.num_negatives`` and in
  ``tables.notes["direct negatives per list"]``), or the split is refused when
  ``exact_negatives`` is set. ``num_negatives=0`` stores no lists (the direct family
  is not used).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from recsysllm.data.catalog import item_key_map, write_json_atomic
from recsysllm.data.tables import RecTables

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
EVAL_SPLITS = ("valid", "test")
# Users with fewer events than this are not split leave-one-out (see short_user_split).
LEAVE_ONE_OUT_MIN_EVENTS = 3
# Hash buckets of short_user_split, out of 10: 0 -> valid, 1 -> test, 2..9 -> train.
_SHORT_USER_BUCKETS = 10


def short_user_split(seed: int, user: str) -> str:
    """The split a user with 1 or 2 events goes to, whole: "train", "valid" or "test".

    A seeded draw that depends on ``(seed, user)`` only (BLAKE2b of both, modulo 10):
    10% valid, 10% test, 80% train, whatever the order of the data or other users.

    Example:
        >>> short_user_split(0, "u1") in SPLITS
        True
    """
    digest = hashlib.blake2b(f"{seed}\x00{user}".encode(), digest_size=8).digest()
    bucket = int.from_bytes(digest, "big") % _SHORT_USER_BUCKETS
    return "valid" if bucket == 0 else "test" if bucket == 1 else "train"


@dataclass(frozen=True)
class Event:
    """One interaction of a user.

    Attributes:
        item: item key (catalog key: the disambiguated title).
        timestamp: seconds since epoch, -1 when unknown.
        rating: NaN when absent.
        review: "" when absent.
        summary: "" when absent.
    """

    item: str
    timestamp: int
    rating: float
    review: str
    summary: str

    @property
    def has_rating(self) -> bool:
        return not math.isnan(self.rating)


@dataclass
class RecSplits:
    """Leave-one-out splits of the k-core filtered data.

    Attributes:
        tables: the filtered tables (interactions, items and users that survived).
        item_keys: raw item id -> item key, for every item of ``tables.items``.
        sequences: user -> all of the user's events in chronological order.
        candidates: split ("valid"/"test") -> user -> target followed by the stored
            negatives (item keys).
        k: the k of the k-core.
        seed: seed the candidates (and the short users' splits) were drawn with.
        num_negatives: negatives per stored candidate list (training samples as many);
            0 when no lists were built (the direct family is not used).
        short_users: user with 1 or 2 events -> the one split holding all of them
            (:func:`short_user_split`); every other user is split leave-one-out.
    """

    tables: RecTables
    item_keys: dict[str, str]
    sequences: dict[str, tuple[Event, ...]]
    candidates: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    k: int = 5
    seed: int = 0
    num_negatives: int = 99
    short_users: dict[str, str] = field(default_factory=dict)

    @property
    def users(self) -> tuple[str, ...]:
        """User ids (leave-one-out and short users), sorted."""
        return tuple(sorted(self.sequences))

    def split_users(self, split: str) -> tuple[str, ...]:
        """Sorted users with a target in ``split`` (train: with at least one train event)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return tuple(user for user in self.users if self.short_users.get(user, split) == split)

    def train_positions(self, user: str) -> range:
        """Positions of the user's train events: all but the last two, all, or none (short users)."""
        short = self.short_users.get(user)
        if short is None:
            return range(len(self.sequences[user]) - 2)
        return range(len(self.sequences[user]) if short == "train" else 0)

    @property
    def train(self) -> dict[str, tuple[Event, ...]]:
        """user -> train events, chronological, for every user that has some."""
        return {
            user: self.sequences[user][: len(self.train_positions(user))]
            for user in self.split_users("train")
        }

    @property
    def valid(self) -> dict[str, Event]:
        """user -> valid event (second-last; a short valid user's last)."""
        return {
            user: self.sequences[user][self.target_index("valid", user)]
            for user in self.split_users("valid")
        }

    @property
    def test(self) -> dict[str, Event]:
        """user -> test event (last)."""
        return {user: self.sequences[user][-1] for user in self.split_users("test")}

    def target_index(self, split: str, user: str) -> int:
        """Position of the split's target in the user's sequence (valid: -2, test: -1, as index).

        A short user's target is their last event, in their one split only.

        Raises:
            ValueError: ``split`` is not valid/test, or the user has no target in it.
        """
        if split not in EVAL_SPLITS:
            raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
        short = self.short_users.get(user)
        if short is None:
            return len(self.sequences[user]) - (2 if split == "valid" else 1)
        if short != split:
            raise ValueError(
                f"user {user!r} has {len(self.sequences[user])} event(s), all in split "
                f"{short!r}: no {split} target"
            )
        return len(self.sequences[user]) - 1

    def with_item_keys(self, item_keys: Mapping[str, str]) -> RecSplits:
        """These splits with every item renamed (raw item id -> new key, e.g. capped names).

        Same users, events, order and stored candidates; only the keys change.

        Raises:
            ValueError: ``item_keys`` does not cover exactly the raw ids of these splits,
                or gives two items one key.
        """
        if set(item_keys) != set(self.item_keys):
            unknown = sorted(set(item_keys) ^ set(self.item_keys))
            raise ValueError(f"{self.tables.name}: new item keys for other items: {unknown[:5]}")
        if len(set(item_keys.values())) != len(item_keys):
            raise ValueError(f"{self.tables.name}: new item keys are not one-to-one")
        rename = {self.item_keys[raw_id]: key for raw_id, key in item_keys.items()}
        sequences = {
            user: tuple(replace(event, item=rename[event.item]) for event in events)
            for user, events in self.sequences.items()
        }
        candidates = {
            split: {user: tuple(rename[key] for key in keys) for user, keys in lists.items()}
            for split, lists in self.candidates.items()
        }
        return replace(self, item_keys=dict(item_keys), sequences=sequences, candidates=candidates)

    def interacted(self, user: str) -> frozenset[str]:
        """Every item key the user interacted with, in any split."""
        return frozenset(event.item for event in self.sequences[user])

    def save_candidates(self, path: str | os.PathLike) -> None:
        """Write the stored direct candidates as JSON (atomic), e.g. next to a checkpoint."""
        payload = {
            "data_set": self.tables.name,
            "k": self.k,
            "seed": self.seed,
            "num_negatives": self.num_negatives,
            **{
                split: {user: list(keys) for user, keys in self.candidates[split].items()}
                for split in EVAL_SPLITS
            },
        }
        write_json_atomic(Path(path), payload)

    def load_candidates(self, path: str | os.PathLike) -> None:
        """Replace the stored candidates by the ones saved at ``path``.

        Raises:
            ValueError: the file does not match these splits (unknown or missing user,
                a list whose first key is not the user's target, an unknown item, an
                interacted negative, or a repeated key); the message names the file,
                split and user.
        """
        path = Path(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: line {error.lineno}: not valid JSON ({error.msg})") from None
        known_items = set(self.item_keys.values())
        loaded: dict[str, dict[str, tuple[str, ...]]] = {}
        for split in EVAL_SPLITS:
            if split not in payload:
                raise ValueError(f"{path}: missing field {split!r}")
            lists = payload[split]
            if not lists and not self.num_negatives:
                loaded[split] = {}  # no lists built (the direct family is not used)
                continue
            expected = set(self.split_users(split))
            missing = expected - set(lists)
            if missing:
                raise ValueError(f"{path}: field {split!r} lacks users {sorted(missing)[:5]}")
            loaded[split] = {}
            for user, keys in lists.items():
                where = f"{path}: field {split!r}, user {user!r}"
                if user not in expected:
                    raise ValueError(f"{where}: user has no {split} target in the splits")
                target = self.sequences[user][self.target_index(split, user)].item
                if not keys or keys[0] != target:
                    raise ValueError(f"{where}: first candidate must be the target {target!r}")
                if len(set(keys)) != len(keys):
                    raise ValueError(f"{where}: candidates repeat an item")
                unknown = [key for key in keys if key not in known_items]
                if unknown:
                    raise ValueError(f"{where}: unknown items {unknown[:3]}")
                interacted = self.interacted(user).intersection(keys[1:])
                if interacted:
                    raise ValueError(
                        f"{where}: negatives the user interacted with: {sorted(interacted)[:3]}"
                    )
                loaded[split][user] = tuple(keys)
        self.candidates = loaded
        lengths = {len(keys) for lists in loaded.values() for keys in lists.values()}
        if lengths:  # the lists' length decides, as when they were drawn
            self.num_negatives = max(lengths) - 1


def k_core_rows(users: Sequence[str], items: Sequence[str], k: int) -> list[int]:
    """Row indices that survive iterated k-core filtering.

    Drops users and items with fewer than ``k`` rows, again and again, until every
    remaining user and item has at least ``k`` rows.

    Example:
        >>> k_core_rows(["a", "a", "b"], ["x", "y", "x"], 2)
        []
    """
    rows = list(range(len(users)))
    while True:
        user_counts = Counter(users[row] for row in rows)
        item_counts = Counter(items[row] for row in rows)
        kept = [
            row for row in rows if user_counts[users[row]] >= k and item_counts[items[row]] >= k
        ]
        if len(kept) == len(rows):
            return kept
        rows = kept


def sample_negatives(
    rng: np.random.Generator,
    item_pool: Sequence[str],
    exclude: frozenset[str] | set[str],
    count: int,
) -> list[str]:
    """``count`` distinct items of ``item_pool`` not in ``exclude``, uniformly at random.

    Rejection sampling (fast when the user touched a small share of the items), with
    an exact fallback over the allowed items when rejection stalls.

    Raises:
        ValueError: fewer than ``count`` allowed items exist.
    """
    chosen: list[str] = []
    if count == 0:
        return chosen
    chosen_set: set[str] = set()
    for _ in range(4):
        draws = rng.integers(0, len(item_pool), size=2 * (count - len(chosen)) + 8).tolist()
        for index in draws:
            key = item_pool[index]
            if key not in exclude and key not in chosen_set:
                chosen_set.add(key)
                chosen.append(key)
                if len(chosen) == count:
                    return chosen
    allowed = [key for key in item_pool if key not in exclude and key not in chosen_set]
    if len(allowed) < count - len(chosen):
        raise ValueError(
            f"only {len(allowed) + len(chosen)} items are left to sample {count} negatives from "
            f"({len(item_pool)} items, {len(exclude)} excluded)"
        )
    picks = rng.choice(len(allowed), size=count - len(chosen), replace=False)
    return chosen + [allowed[index] for index in picks]


def build_splits(
    tables: RecTables,
    *,
    k: int = 5,
    seed: int = 0,
    num_negatives: int = 99,
    exact_negatives: bool = False,
) -> RecSplits:
    """Filter ``tables`` to its k-core and split every user leave-one-out in time order.

    Users left with 1 or 2 events (k < 3) go whole to one split (:func:`short_user_split`).

    Args:
        tables: the data set (any source).
        k: minimum interactions per user and per item.
        seed: seed of the direct candidates and of the short users' splits.
        num_negatives: sampled negatives per direct candidate list (99 gives 1-of-100);
            fewer when some user has fewer items left to draw from (see
            ``exact_negatives``); 0 builds no lists.
        exact_negatives: refuse, instead of using fewer negatives, when some user has
            fewer than ``num_negatives`` items left.

    Returns:
        RecSplits with stored candidates for every user with a valid/test target.

    Raises:
        ValueError: k < 1, num_negatives < 0, an interaction naming an item missing from
            the items table (names the row), no interactions left after filtering, or
            too few items to draw the negatives from (see above).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
    name = tables.name
    columns = tables.interactions.to_dict()
    key_of = item_key_map(tables.items, source=name)
    for row, raw_id in enumerate(columns["item"]):
        if raw_id not in key_of:
            raise ValueError(
                f"{name}: interactions row {row}: field 'item' {raw_id!r} is not in the items table"
            )

    # Chronological order with the documented tie-break, then first occurrences only.
    order = sorted(range(len(columns["user"])), key=lambda row: (columns["timestamp"][row], row))
    seen_pairs: set[tuple[str, str]] = set()
    first_rows = []
    for row in order:
        pair = (columns["user"][row], columns["item"][row])
        if pair not in seen_pairs:
            seen_pairs.add(pair)
            first_rows.append(row)
    duplicates = len(order) - len(first_rows)

    kept = k_core_rows(
        [columns["user"][r] for r in first_rows], [columns["item"][r] for r in first_rows], k
    )
    rows = [first_rows[index] for index in kept]  # still chronological
    by_user: dict[str, list[int]] = {}
    for row in rows:
        by_user.setdefault(columns["user"][row], []).append(row)
    short_users = {
        user: short_user_split(seed, user)
        for user, user_rows in by_user.items()
        if len(user_rows) < LEAVE_ONE_OUT_MIN_EVENTS
    }
    rows = sorted(rows)  # the filtered tables keep the source's row order

    interactions = tables.interactions.select(rows)
    kept_items = {columns["item"][row] for row in rows}
    # select() by index, not filter(): no map job, no progress bar, no cache files.
    items = tables.items.select(
        [row for row, item in enumerate(tables.items.to_dict()["item"]) if item in kept_items]
    )
    users = tables.users.select(
        [row for row, user in enumerate(tables.users.to_dict()["user"]) if user in by_user]
    )
    notes = dict(tables.notes)
    notes["duplicate interactions dropped"] = duplicates
    notes[f"interactions dropped by {k}-core"] = len(first_rows) - len(kept)
    short_counts = Counter(short_users.values())
    for split in SPLITS:
        notes[f"users with < 3 interactions, all in {split}"] = short_counts[split]
    if duplicates or len(first_rows) != len(rows):
        # WARNING, not INFO: rows the user gave are not used, and they should hear of it.
        logger.warning(
            "%s: %d interaction rows in, %d duplicate (user, item) rows dropped, "
            "%d removed by the %d-core, %d kept",
            name, len(order), duplicates, len(first_rows) - len(kept), k, len(rows),
        )  # fmt: skip
    if not rows:
        raise ValueError(
            f"{name}: no interactions left after dropping {duplicates} duplicates and "
            f"applying the {k}-core to {len(order)} rows; lower data.k_core"
        )
    if short_users:
        logger.info(
            "%s: %d users with < 3 interactions go whole to one split (train %d, valid %d, test %d)",
            name, len(short_users), *(short_counts[split] for split in SPLITS),
        )  # fmt: skip
    filtered = replace(tables, interactions=interactions, items=items, users=users, notes=notes)

    item_keys = item_key_map(items, source=name)
    sequences = {
        user: tuple(
            Event(
                item=item_keys[columns["item"][row]],
                timestamp=int(columns["timestamp"][row]),
                rating=float("nan")
                if columns["rating"][row] is None
                else float(columns["rating"][row]),
                review=columns["review"][row] or "",
                summary=columns["summary"][row] or "",
            )
            for row in user_rows
        )
        for user, user_rows in sorted(by_user.items())
    }
    splits = RecSplits(filtered, item_keys, sequences, k=k, seed=seed, short_users=short_users)
    splits.num_negatives = _negatives_per_list(splits, num_negatives, exact_negatives)
    notes["direct negatives per list"] = splits.num_negatives
    if splits.num_negatives:
        splits.candidates = _draw_candidates(splits, seed, splits.num_negatives)
    else:
        splits.candidates = {split: {} for split in EVAL_SPLITS}
    return splits


def _negatives_per_list(splits: RecSplits, wanted: int, exact: bool) -> int:
    """``wanted``, or the most negatives every user can get on a small catalog."""
    if wanted == 0:
        return 0
    pool = len(splits.item_keys)
    user, available = min(
        ((u, pool - len(splits.interacted(u))) for u in splits.users), key=lambda pair: pair[1]
    )
    if available >= wanted:
        return wanted
    problem = (
        f"{splits.tables.name}: user {user!r} interacted with {pool - available} of the "
        f"{pool} items, leaving {available} to draw direct negatives from, fewer than "
        f"data.num_negatives = {wanted}"
    )
    if exact or available == 0:
        advice = (
            "lower data.num_negatives or unset data.exact_negatives"
            if available
            else "set data.mixture.direct to 0 and leave direct out of eval.families"
        )
        raise ValueError(f"{problem}; {advice}")
    logger.warning(
        "%s; every direct candidate list gets %d negatives (1-of-%d)",
        problem, available, available + 1,
    )  # fmt: skip
    return available


def _draw_candidates(
    splits: RecSplits, seed: int, num_negatives: int
) -> dict[str, dict[str, tuple[str, ...]]]:
    rng = np.random.default_rng(seed)
    item_pool = sorted(splits.item_keys.values())
    candidates: dict[str, dict[str, tuple[str, ...]]] = {split: {} for split in EVAL_SPLITS}
    for user in splits.users:
        interacted = splits.interacted(user)
        for split in EVAL_SPLITS:
            if splits.short_users.get(user, split) != split:
                continue  # a short user has a target in one split at most
            target = splits.sequences[user][splits.target_index(split, user)].item
            try:
                negatives = sample_negatives(rng, item_pool, interacted, num_negatives)
            except ValueError as error:
                raise ValueError(
                    f"{splits.tables.name}: direct candidates of user {user!r} ({split}): {error}"
                ) from None
            candidates[split][user] = (target, *negatives)
    return candidates
