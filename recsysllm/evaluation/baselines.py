"""Reference systems scored in the same harness, on the same examples, as the model.

Every results table carries these rows next to the model so a number can be read
against "how good is trivially good":

- ``popularity``: items ranked by their number of training interactions (score =
  count; ties by item key in all-item rankings);
- ``random``: a uniformly random ranking, seeded per (seed, user), so a user gets
  the same ranking under every template and the result does not depend on the
  order examples are evaluated in;
- ``global_mean`` / ``user_mean`` (rating variant): the mean training rating of
  all users / of this user (global mean for a user without training ratings).

The ranking rows are :class:`~recsysllm.evaluation.evaluator.ItemRanker` s, run by
``evaluate_ranker`` under the model's :class:`EvalProtocol`: the same examples, the
same exclusion of the user's history (or none), the same pessimistic tie rule and
metrics. Baselines produce no outcome for the ``yesno`` and ``text`` variants; the
item mean rating and the text references (item's most common text, the review's lead
words) are :mod:`recsysllm.evaluation.text_baselines`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from recsysllm.data.splits import Event, RecSplits
from recsysllm.evaluation.evaluator import (
    EvalProtocol,
    EvaluationResults,
    ExampleOutcome,
    evaluate_ranker,
    example_variant,
)
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

    def rank_all_items(
        self, examples: Sequence[Example], exclude: Sequence[frozenset[str]], k: int
    ) -> list[list[tuple[str, float]]]:
        """ItemRanker: the k most popular items outside ``exclude`` (score = count)."""
        results = []
        for excluded in exclude:
            top = []
            for item in self._order:
                if item not in excluded:
                    top.append((item, float(self._counts[item])))
                    if len(top) == k:
                        break
            results.append(top)
        return results

    def score_candidates(self, examples: Sequence[Example]) -> list[list[float]]:
        """ItemRanker: each candidate's training count (equal counts tie)."""
        return [[float(self._counts.get(c, 0)) for c in e.candidates] for e in examples]


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

    def rank_all_items(
        self, examples: Sequence[Example], exclude: Sequence[frozenset[str]], k: int
    ) -> list[list[tuple[str, float]]]:
        """ItemRanker: the user's random permutation outside ``exclude``, score -position."""
        results = []
        for example, excluded in zip(examples, exclude, strict=True):
            order = [item for item in self.rank_all(example.user) if item not in excluded]
            results.append([(item, -float(i)) for i, item in enumerate(order[:k])])
        return results

    def score_candidates(self, examples: Sequence[Example]) -> list[list[float]]:
        """ItemRanker: the user's random permutation of the candidates, score -position."""
        scores = []
        for example in examples:
            order = self.rank_candidates(example.user, list(example.candidates))
            position = {item: i for i, item in enumerate(order)}
            scores.append([-float(position[c]) for c in example.candidates])
        return scores


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


def known_events(splits: RecSplits, split: str) -> dict[str, list[Event]]:
    """user -> the events known before ``split``'s targets: the train events, and for
    "test" also the valid targets (see :func:`training_statistics`)."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    known = {user: list(events) for user, events in splits.train.items()}
    if split == "test":
        for user, event in splits.valid.items():
            known.setdefault(user, []).append(event)
    return known


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
    known = known_events(splits, split)
    counts: Counter[str] = Counter()
    ratings: dict[str, list[float]] = {}
    for user, events in known.items():
        counts.update(event.item for event in events)
        ratings[user] = [float(e.rating) for e in events if not np.isnan(e.rating)]
    return dict(counts), ratings


class _AsItemRanker:
    """Adapts ``rank_all_items`` to the ItemRanker name ``rank_all``."""

    def __init__(self, ranker: PopularityRanker | RandomRanker) -> None:
        self.ranker = ranker

    def rank_all(self, examples, exclude, k):
        return self.ranker.rank_all_items(examples, exclude, k)

    def score_candidates(self, examples):
        return self.ranker.score_candidates(examples)


def evaluate_baselines(
    examples: Sequence[Example],
    *,
    items: Sequence[str],
    item_counts: Mapping[str, int],
    protocol: EvalProtocol,
    user_ratings: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, EvaluationResults]:
    """Score the reference systems on the same examples, under the model's protocol.

    Args:
        examples: evaluation examples (the ones given to ``evaluate``).
        items: every catalog item key.
        item_counts: item key -> number of training interactions.
        protocol: the model's protocol (same ks, exclusion, history, seed).
        user_ratings: user id -> training ratings; None skips the rating baselines.

    Returns:
        system name -> results, for "popularity", "random" and, with
        ``user_ratings``, "global_mean" and "user_mean".
    """
    systems = {
        "popularity": evaluate_ranker(
            "popularity", _AsItemRanker(PopularityRanker(item_counts, items)), examples, protocol
        ),
        "random": evaluate_ranker(
            "random", _AsItemRanker(RandomRanker(items, protocol.seed)), examples, protocol
        ),
    }
    if user_ratings is not None:
        global_mean, user_means = mean_ratings(user_ratings)
        rating_rows = {
            name: EvaluationResults(system=name, protocol=protocol)
            for name in ("global_mean", "user_mean")
        }
        for example in examples:
            if example_variant(example) != "rating":
                continue
            base = {
                "family": example.task,
                "template_id": example.template_id,
                "seen": example.seen,
                "variant": "rating",
                "user": example.user,
                "target": example.target or "",
            }
            rating_rows["global_mean"].outcomes.append(ExampleOutcome(**base, rating=global_mean))
            rating_rows["user_mean"].outcomes.append(
                ExampleOutcome(**base, rating=user_means.get(example.user, global_mean))
            )
        systems.update(rating_rows)
    # A system with no outcome (e.g. no rating examples) adds nothing to a table.
    return {name: results for name, results in systems.items() if results.outcomes}
