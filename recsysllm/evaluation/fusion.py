"""Language model + SASRec fusion: a guided item search, and rescoring the LM's list.

Both rank by the same fusion score

    fused = (1 - weight) * LM log-probability + weight * SASRec log-softmax

``weight`` 0 is the LM alone, 1 is SASRec alone. They differ in which items get a
score on all-item examples (sequential):

- guided (:class:`GuidedFusionRanker`, row "fusion"): SASRec guides the LM's
  constrained beam search (D3's text-free assistant): each trie prefix is ranked by
  its fused LM log-probability plus weight * log of SASRec's probability mass over
  the items below it (``generation.ItemPrior``), so the beams go where either system
  puts mass, and a finished item scores exactly its fused score;
- rescoring (:class:`FusionRanker`, row "fusion-rescore"): the LM's own (unguided)
  constrained-beam top-N is re-ranked by the fused score (ties keep the LM's order);
  a target outside that list stays a miss at every k, whatever the weight.

Candidate examples (direct) score every candidate exactly in both.

The weight is chosen on the VALID split only: :func:`choose_weight` takes the valid
rescoring cases, :func:`choose_guided_weight` runs the guided search on the valid
examples for each grid weight; each returns the weight that maximises NDCG@k. No
function here sees both splits.

In the harness (``rows.extra_rows``)::

    weight, _ = choose_guided_weight(
        lambda w: GuidedFusionRanker(lm, sasrec_valid, w), valid_seq_examples, valid_protocol
    )
    row = evaluate_ranker("fusion", GuidedFusionRanker(lm, sasrec_test, weight), examples, protocol)
    valid_cases = lm_list_cases(lm, sasrec_valid, valid_seq_examples, exclude, 20)
    weight, _ = choose_weight(valid_cases)
    row = evaluate_ranker("fusion-rescore", FusionRanker(lm, sasrec_test, weight), examples, protocol)

Example:
    >>> case = FusionCase(("a", "b"), (-0.1, -0.5), (-3.0, -0.2), target="b")
    >>> fused_ranks([case], weight=0.0), fused_ranks([case], weight=0.5)
    ([2], [1])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from recsysllm.config import FUSION_GRID
from recsysllm.evaluation import metrics
from recsysllm.evaluation.evaluator import (
    RANKING_VARIANTS,
    EvalProtocol,
    ItemRanker,
    ModelRanker,
    evaluate_ranker,
    example_variant,
)
from recsysllm.evaluation.sasrec import SASRecItemRanker
from recsysllm.schema import Example

DEFAULT_GRID = tuple(round(0.1 * step, 1) for step in range(11))  # 0.0, 0.1, ..., 1.0


@dataclass(frozen=True)
class FusionCase:
    """One evaluated example: the LM's candidates and both systems' scores of them.

    Attributes:
        candidates: item keys, in the LM's order (best first).
        lm_log_probs: the LM's log-probability of each candidate.
        sasrec_log_probs: SASRec's log-softmax (over the whole catalog) of each candidate.
        target: the gold item key (may be absent from ``candidates``: a miss).
    """

    candidates: tuple[str, ...]
    lm_log_probs: tuple[float, ...]
    sasrec_log_probs: tuple[float, ...]
    target: str

    def __post_init__(self) -> None:
        if not len(self.candidates) == len(self.lm_log_probs) == len(self.sasrec_log_probs):
            raise ValueError(
                f"fusion case for target {self.target!r}: {len(self.candidates)} candidates, "
                f"{len(self.lm_log_probs)} LM scores, {len(self.sasrec_log_probs)} SASRec scores"
            )
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError(f"fusion case for target {self.target!r}: candidates repeat an item")


def rerank(case: FusionCase, weight: float) -> list[str]:
    """The case's candidates by descending fused score (ties: the LM's order).

    Example:
        >>> rerank(FusionCase(("a", "b", "c"), (-1.0, -2.0, -3.0), (-3.0, -1.0, -1.0), "c"), 1.0)
        ['b', 'c', 'a']
    """
    return [key for key, _ in rerank_scored(case, weight)]


def rerank_scored(case: FusionCase, weight: float) -> list[tuple[str, float]]:
    """(candidate, fused score) by descending fused score (ties: the LM's order)."""
    fused = fuse(case.lm_log_probs, case.sasrec_log_probs, weight)
    # sorted() is stable: equal fused scores keep the LM's order.
    order = sorted(range(len(fused)), key=lambda i: -fused[i])
    return [(case.candidates[i], fused[i]) for i in order]


def fuse(lm_scores: Sequence[float], sasrec_scores: Sequence[float], weight: float) -> list[float]:
    """(1 - weight) * LM score + weight * SASRec score, elementwise.

    Example:
        >>> fuse([-1.0, -2.0], [-3.0, -0.5], 0.25)
        [-1.5, -1.625]
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    return [
        (1.0 - weight) * lm + weight * sasrec
        for lm, sasrec in zip(lm_scores, sasrec_scores, strict=True)
    ]


def fused_ranks(cases: Sequence[FusionCase], weight: float) -> list[int | None]:
    """1-based rank of each case's target after fusion (None: not a candidate)."""
    return [metrics.rank_of(case.target, rerank(case, weight)) for case in cases]


def choose_weight(
    valid_cases: Sequence[FusionCase], grid: Sequence[float] = DEFAULT_GRID, k: int = 10
) -> tuple[float, dict[float, float]]:
    """The grid weight with the highest NDCG@k on the valid cases.

    Ties go to the smaller weight (closer to the LM alone).

    Args:
        valid_cases: cases of the valid split (never the test split).
        grid: weights to try, each in [0, 1].
        k: cut-off of the NDCG.

    Returns:
        (best weight, weight -> valid NDCG@k for every grid weight).
    """
    if not valid_cases:
        raise ValueError("choose_weight needs at least one valid case")
    if not grid:
        raise ValueError("choose_weight needs a non-empty grid")
    scores = {weight: metrics.ndcg_at_k(fused_ranks(valid_cases, weight), k) for weight in grid}
    return metrics.best_on_valid(scores), scores


def fusion_cases(
    lm_lists: Sequence[Sequence[tuple[str, float]]],
    sasrec_log_probs: torch.Tensor,
    item_index: dict[str, int],
    targets: Sequence[str],
) -> list[FusionCase]:
    """Cases from the LM's ranked (key, log-prob) lists and SASRec's catalog scores.

    Args:
        lm_lists: per example, the LM's (item key, log-probability) pairs, best first
            (``generation.recommend_items`` returns this shape).
        sasrec_log_probs: [examples, catalog] SASRec log-softmax of the same examples
            (``SASRecRanker.score_all`` of their histories).
        item_index: item key -> column of ``sasrec_log_probs`` (``SASRecRanker.index``).
        targets: per example, the gold item key.

    Raises:
        ValueError: the counts disagree, or an LM candidate is not in ``item_index``.
    """
    if not len(lm_lists) == len(sasrec_log_probs) == len(targets):
        raise ValueError(
            f"{len(lm_lists)} LM lists, {len(sasrec_log_probs)} SASRec rows, {len(targets)} targets"
        )
    cases = []
    for row, (pairs, target) in enumerate(zip(lm_lists, targets, strict=True)):
        unknown = [key for key, _ in pairs if key not in item_index]
        if unknown:
            raise ValueError(
                f"example {row}: LM candidates not in the SASRec catalog: {unknown[:3]}"
            )
        cases.append(
            FusionCase(
                candidates=tuple(key for key, _ in pairs),
                lm_log_probs=tuple(float(score) for _, score in pairs),
                sasrec_log_probs=tuple(
                    float(sasrec_log_probs[row, item_index[key]]) for key, _ in pairs
                ),
                target=target,
            )
        )
    return cases


class FusionRanker:
    """LM + SASRec fusion as an ``evaluation.ItemRanker``: one row of the harness.

    All-item examples: the LM ranks its top ``num_candidates`` (with the protocol's
    exclusion), SASRec scores them, and they are re-ranked by :func:`fuse`. Candidate
    examples (direct): every candidate's LM score fused with its SASRec score.

    Args:
        lm: the language model's ranker (``evaluator.ModelRanker``).
        sasrec: SASRec's ranker (``sasrec.SASRecItemRanker`` of the same split).
        weight: the fusion weight, chosen on valid (:func:`choose_weight`).
        num_candidates: LM list length to rescore (needs that many beams).
        candidate_weight: the weight of candidate (direct) examples, chosen on their
            own valid cases (None: ``weight``).
    """

    def __init__(
        self,
        lm: ItemRanker,
        sasrec: SASRecItemRanker,
        weight: float,
        num_candidates: int = 20,
        candidate_weight: float | None = None,
    ) -> None:
        candidate_weight = weight if candidate_weight is None else candidate_weight
        for value in (weight, candidate_weight):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fusion weight must be in [0, 1], got {value}")
        self.lm = lm
        self.sasrec = sasrec
        self.weight = weight
        self.candidate_weight = candidate_weight
        self.num_candidates = num_candidates

    def rank_all(
        self, examples: Sequence[Example], exclude: Sequence[frozenset[str]], k: int
    ) -> list[list[tuple[str, float]]]:
        cases = lm_list_cases(self.lm, self.sasrec, examples, exclude, max(k, self.num_candidates))
        return [rerank_scored(case, self.weight)[:k] for case in cases]

    def score_candidates(self, examples: Sequence[Example]) -> list[list[float]]:
        lm = self.lm.score_candidates(examples)
        sasrec = self.sasrec.score_candidates(examples)
        return [fuse(a, b, self.candidate_weight) for a, b in zip(lm, sasrec, strict=True)]


def lm_list_cases(
    lm: ItemRanker,
    sasrec: SASRecItemRanker,
    examples: Sequence[Example],
    exclude: Sequence[frozenset[str]],
    num_candidates: int,
) -> list[FusionCase]:
    """Cases of all-item examples: the LM's top ``num_candidates`` and SASRec's scores of them."""
    lm_lists = lm.rank_all(examples, exclude, num_candidates)
    return fusion_cases(
        lm_lists,
        sasrec.scores(examples),
        sasrec.ranker.index,
        [example.target or "" for example in examples],
    )


def candidate_cases(
    lm: ItemRanker, sasrec: SASRecItemRanker, examples: Sequence[Example]
) -> list[FusionCase]:
    """Cases of candidate (direct) examples: every candidate scored by both systems."""
    lm_scores = lm.score_candidates(examples)
    sasrec_scores = sasrec.score_candidates(examples)
    return [
        FusionCase(tuple(e.candidates), tuple(a), tuple(b), e.target or "")
        for e, a, b in zip(examples, lm_scores, sasrec_scores, strict=True)
    ]


class GuidedFusionRanker:
    """LM + SASRec fusion with SASRec guiding the LM's item search: row "fusion".

    All-item examples: ``ModelRanker.rank_all_guided`` with SASRec's log-softmax as the
    prior, so the returned items are the search's best by the fused score, each with
    its exact fused score (never an item of ``exclude``). Candidate examples: every
    candidate's LM score fused with its SASRec score (as :class:`FusionRanker`).

    Args:
        lm: the language model's ranker (its beams are the search's).
        sasrec: SASRec's ranker (``sasrec.SASRecItemRanker`` of the same split).
        weight: the all-item weight, chosen on valid (:func:`choose_guided_weight`).
        candidate_weight: the weight of candidate examples, chosen on their own valid
            cases (None: ``weight``).
    """

    def __init__(
        self,
        lm: ModelRanker,
        sasrec: SASRecItemRanker,
        weight: float,
        candidate_weight: float | None = None,
    ) -> None:
        candidate_weight = weight if candidate_weight is None else candidate_weight
        for value in (weight, candidate_weight):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fusion weight must be in [0, 1], got {value}")
        self.lm, self.sasrec = lm, sasrec
        self.weight, self.candidate_weight = weight, candidate_weight

    def rank_all(
        self, examples: Sequence[Example], exclude: Sequence[frozenset[str]], k: int
    ) -> list[list[tuple[str, float]]]:
        return self.lm.rank_all_guided(
            examples,
            exclude,
            k,
            self.sasrec.ranker.items,
            self.sasrec.scores(examples),
            self.weight,
        )

    def score_candidates(self, examples: Sequence[Example]) -> list[list[float]]:
        lm = self.lm.score_candidates(examples)
        sasrec = self.sasrec.score_candidates(examples)
        return [fuse(a, b, self.candidate_weight) for a, b in zip(lm, sasrec, strict=True)]


def choose_guided_weight(
    ranker_for: Callable[[float], ItemRanker],
    valid_examples: Sequence[Example],
    protocol: EvalProtocol,
    grid: Sequence[float] = FUSION_GRID,
    k: int = 10,
    batch_size: int = 16,
) -> tuple[float, dict[float, float]]:
    """The grid weight whose guided search has the highest NDCG@k on VALID examples.

    Each weight is one search over the examples (``ranker_for(weight)``, e.g. a
    :class:`GuidedFusionRanker` on the valid split), under the valid ``protocol``. Ties
    go to the smaller weight (closer to the LM alone).

    Args:
        ranker_for: weight -> the ranker to evaluate.
        valid_examples: all-item examples of the valid split (never the test split).
        protocol: the valid split's protocol (its history exclusion).
        grid: weights to try, each in [0, 1].
        k: cut-off of the NDCG.
        batch_size: examples per search.

    Returns:
        (best weight, weight -> valid NDCG@k for every grid weight).
    """
    if not valid_examples:
        raise ValueError("choose_guided_weight needs at least one valid example")
    if not grid:
        raise ValueError("choose_guided_weight needs a non-empty grid")
    others = [e for e in valid_examples if example_variant(e) != RANKING_VARIANTS[0]]
    if others:
        raise ValueError(f"{others[0].describe()}: the guided search ranks all-item examples only")
    scores = {}
    for weight in grid:
        results = evaluate_ranker(
            "fusion", ranker_for(weight), valid_examples, protocol, batch_size
        )
        scores[weight] = metrics.ndcg_at_k([o.rank for o in results.outcomes], k)
    return metrics.best_on_valid(scores), scores
