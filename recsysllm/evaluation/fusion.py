"""Language model + SASRec fusion: rescoring the LM's candidate list.

The language model proposes a candidate list (e.g. the constrained beam's top-N item
keys with their log-probabilities); each candidate is rescored as

    fused = (1 - weight) * LM log-probability + weight * SASRec log-softmax

and the list is re-ranked by the fused score (ties keep the LM's order). ``weight`` 0
is the LM alone, 1 is SASRec alone restricted to the LM's candidates. A target outside
the candidate list stays a miss at every k, whatever the weight.

The weight is chosen on the VALID split only: :func:`choose_weight` takes the valid
cases and returns the weight that maximises NDCG@k over a grid; apply it to the test
cases with :func:`fused_ranks`. No function here sees both splits.

Example:
    >>> case = FusionCase(("a", "b"), (-0.1, -0.5), (-3.0, -0.2), target="b")
    >>> fused_ranks([case], weight=0.0), fused_ranks([case], weight=0.5)
    ([2], [1])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from recsysllm.evaluation import metrics

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
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    fused = [
        (1.0 - weight) * lm + weight * sasrec
        for lm, sasrec in zip(case.lm_log_probs, case.sasrec_log_probs, strict=True)
    ]
    # sorted() is stable: equal fused scores keep the LM's order.
    order = sorted(range(len(fused)), key=lambda i: -fused[i])
    return [case.candidates[i] for i in order]


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
    best = min(scores, key=lambda weight: (-scores[weight], weight))
    return best, scores


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
