"""Reference systems scored in the same harness, on the same examples, as the model.

Every results table carries these rows next to the model so a number can be read
against "how good is trivially good":

- ``popularity``: items ranked by their number of training interactions (ties by
  item key), the user's history items excluded;
- ``random``: a uniformly random ranking, seeded per (seed, user), so a user gets
  the same ranking under every template and the result does not depend on the
  order examples are evaluated in;
- ``global_mean`` / ``user_mean`` (rating variant): the mean training rating of
  all users / of this user (global mean for a user without training ratings).

Ranking variants: ``all_items`` ranks the whole catalog, ``candidates`` ranks the
example's stored candidates (1 positive + 99 negatives for direct). Baselines
produce no outcome for the ``yesno`` and ``text`` variants.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from recsysllm.data.splits import RecSplits
from recsysllm.evaluation.evaluator import EvaluationResults, ExampleOutcome, example_variant
from recsysllm.evaluation.metrics import rank_of
from recsysllm.schema import Example


class PopularityRanker:
    """Ranks items by training popularity, excluding the user's history items.

    Args:
        item_counts: item key -> number of training interactions.
        items: every catalog item key; items missing from ``item_counts`` count 0.

    Example:
        >>> ranker = PopularityRanker({"a": 3, "b": 5, "c": 3}, ["a", "b", "c", "d"])
        >>> ranker.rank_all(history=["b"])
        ['a', 'c', 'd']
    """

    def __init__(self, item_counts: Mapping[str, int], items: Sequence[str]) -> None:
        unknown = sorted(set(item_counts) - set(items))
        if unknown:
            raise ValueError(f"popularity counts name items not in the catalog: {unknown[:5]}")
        self._counts = {item: int(item_counts.get(item, 0)) for item in items}
        # Most popular first; ties by key so the order never depends on dict order.
        self._order = sorted(items, key=lambda item: (-self._counts[item], item))

    def rank_all(self, history: Collection[str] = ()) -> list[str]:
        """All catalog items, most popular first, without the history items."""
        excluded = set(history)
        return [item for item in self._order if item not in excluded]

    def rank_candidates(self, candidates: Sequence[str]) -> list[str]:
        """The candidates, most popular first (ties by key)."""
        return sorted(candidates, key=lambda item: (-self._counts.get(item, 0), item))


class RandomRanker:
    """Uniformly random rankings, reproducible per (seed, user).

    Args:
        items: every catalog item key.
        seed: base seed.
    """

    def __init__(self, items: Sequence[str], seed: int) -> None:
        self._items = sorted(items)
        self._seed = seed

    def _generator(self, user: str) -> np.random.Generator:
        # A stable digest, not hash(): Python salts str hashes per process.
        user_key = int.from_bytes(hashlib.sha256(user.encode("utf-8")).digest()[:8], "little")
        return np.random.default_rng([self._seed, user_key])

    def rank_all(self, user: str) -> list[str]:
        """A random permutation of all catalog items for this user."""
        order = self._generator(user).permutation(len(self._items))
        return [self._items[i] for i in order]

    def rank_candidates(self, user: str, candidates: Sequence[str]) -> list[str]:
        """A random permutation of the candidates for this user."""
        order = self._generator(user).permutation(len(candidates))
        return [candidates[i] for i in order]


def mean_ratings(user_ratings: Mapping[str, Sequence[float]]) -> tuple[float, dict[str, float]]:
    """Global mean rating and per-user mean ratings of training interactions.

    Args:
        user_ratings: user id -> that user's training ratings (NaN entries ignored).

    Returns:
        (global mean, user id -> mean) over users with at least one rating.
    """
    per_user = {}
    pooled: list[float] = []
    for user, ratings in user_ratings.items():
        valid = [float(r) for r in ratings if not np.isnan(r)]
        if valid:
            per_user[user] = sum(valid) / len(valid)
            pooled.extend(valid)
    if not pooled:
        raise ValueError("no training ratings: rating baselines need at least one rating")
    return sum(pooled) / len(pooled), per_user


def training_statistics(
    splits: RecSplits, split: str
) -> tuple[dict[str, int], dict[str, list[float]]]:
    """Item counts and user ratings from the interactions known before the evaluated targets.

    Evaluating "valid" may use the train events; evaluating "test" also the valid
    targets (as training for test would). For leave-one-out users that is every event
    but the last two, or but the last; users with fewer than three events sit whole in
    one split (``RecSplits.short_users``) and count only where they are train users.

    Args:
        splits: the data's splits.
        split: "valid" or "test".

    Returns:
        (item key -> count, user id -> ratings, NaN ratings left out).
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    known = {user: list(events) for user, events in splits.train.items()}
    if split == "test":
        for user, event in splits.valid.items():
            known.setdefault(user, []).append(event)
    counts: Counter[str] = Counter()
    ratings: dict[str, list[float]] = {}
    for user, events in known.items():
        counts.update(event.item for event in events)
        ratings[user] = [float(e.rating) for e in events if not np.isnan(e.rating)]
    return dict(counts), ratings


def evaluate_baselines(
    examples: Sequence[Example],
    *,
    items: Sequence[str],
    item_counts: Mapping[str, int],
    user_ratings: Mapping[str, Sequence[float]] | None = None,
    ks: tuple[int, ...] = (1, 5, 10),
    seed: int = 0,
    exclude_history: bool = False,
    rating_scale: tuple[float, float] = (1.0, 5.0),
) -> dict[str, EvaluationResults]:
    """Score the reference systems on the same examples as the model.

    Args:
        examples: evaluation examples (the ones given to ``evaluate``).
        items: every catalog item key.
        item_counts: item key -> number of training interactions.
        user_ratings: user id -> training ratings; None skips the rating baselines.
        ks: ranking cut-offs.
        seed: seed of the random ranker.
        exclude_history: mirrors the model's option; popularity always excludes the
            history, so its ``excl. history`` ranks equal its plain ranks, while the
            random ranker reports both.
        rating_scale: (min, max) rating.

    Returns:
        system name -> results, for "popularity", "random" and, with
        ``user_ratings``, "global_mean" and "user_mean".
    """
    popularity = PopularityRanker(item_counts, items)
    random = RandomRanker(items, seed)
    systems = {
        name: EvaluationResults(
            system=name, ks=ks, exclude_history=exclude_history, rating_scale=rating_scale
        )
        for name in ("popularity", "random")
    }
    rating_means = mean_ratings(user_ratings) if user_ratings is not None else None
    if rating_means is not None:
        for name in ("global_mean", "user_mean"):
            systems[name] = EvaluationResults(
                system=name, ks=ks, exclude_history=exclude_history, rating_scale=rating_scale
            )

    for example in examples:
        variant = example_variant(example)
        base = {
            "family": example.task,
            "template_id": example.template_id,
            "seen": example.seen,
            "variant": variant,
            "user": example.user,
            "target": example.target or "",
        }
        target = example.target or ""
        if variant == "all_items":
            popular = popularity.rank_all(example.history)
            shuffled = random.rank_all(example.user)
            history = set(example.history)
            unseen_shuffled = [item for item in shuffled if item not in history]
            systems["popularity"].outcomes.append(
                ExampleOutcome(
                    **base,
                    rank=rank_of(target, popular),
                    rank_excluding_history=rank_of(target, popular) if exclude_history else None,
                )
            )
            systems["random"].outcomes.append(
                ExampleOutcome(
                    **base,
                    rank=rank_of(target, shuffled),
                    rank_excluding_history=rank_of(target, unseen_shuffled)
                    if exclude_history
                    else None,
                )
            )
        elif variant == "candidates":
            candidates = list(example.candidates)
            systems["popularity"].outcomes.append(
                ExampleOutcome(**base, rank=rank_of(target, popularity.rank_candidates(candidates)))
            )
            systems["random"].outcomes.append(
                ExampleOutcome(
                    **base, rank=rank_of(target, random.rank_candidates(example.user, candidates))
                )
            )
        elif variant == "rating" and rating_means is not None:
            global_mean, user_means = rating_means
            systems["global_mean"].outcomes.append(ExampleOutcome(**base, rating=global_mean))
            systems["user_mean"].outcomes.append(
                ExampleOutcome(**base, rating=user_means.get(example.user, global_mean))
            )
    # A system with no outcome (e.g. no rating examples) adds nothing to a table.
    return {name: results for name, results in systems.items() if results.outcomes}
