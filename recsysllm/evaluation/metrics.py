"""Recommendation and text-generation metrics (DESIGN.md section 8).

Ranking metrics take, per example, the 1-based rank of the single relevant item
in the system's ranking, or ``None`` when the item is not in the returned list
(for constrained beam search, which returns only the top-k items, an item beyond
the beam is "not ranked" and counts as a miss at every k).

Text metrics wrap sacrebleu and rouge-score; nothing here re-implements them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rank_of(target: str, ranked: Sequence[str]) -> int | None:
    """1-based rank of ``target`` in ``ranked``, or None when it is absent.

    Example:
        >>> rank_of("b", ["a", "b", "c"])
        2
    """
    for position, key in enumerate(ranked, start=1):
        if key == target:
            return position
    return None


def hit_rate_at_k(ranks: Sequence[int | None], k: int) -> float:
    """Hit rate at k: the fraction of examples whose relevant item has rank <= k.

    HR@k = (1/N) * sum_i [rank_i <= k], with a missing rank (``None``) a miss.

    Args:
        ranks: per example, the 1-based rank of the relevant item, or None.
        k: cut-off, >= 1.

    Returns:
        HR@k in [0, 1]; 0.0 for an empty list.

    Example:
        >>> hit_rate_at_k([3, 6, None, 1], k=5)
        0.5
    """
    _check_k(k)
    if not ranks:
        return 0.0
    return sum(1 for rank in ranks if rank is not None and rank <= k) / len(ranks)


def best_on_valid(scores: Mapping[float, float]) -> float:
    """The grid value with the highest valid score; ties go to the smaller value (the
    one closer to the LM alone: fusion weight or PMI alpha 0).

    >>> best_on_valid({0.0: 0.2, 0.5: 0.3, 1.0: 0.3})
    0.5
    """
    if not scores:
        raise ValueError("best_on_valid needs at least one grid value")
    return min(scores, key=lambda value: (-scores[value], value))


def ndcg_at_k(ranks: Sequence[int | None], k: int) -> float:
    """Normalised discounted cumulative gain at k with one relevant item per example.

    With a single relevant item the ideal DCG is 1, so per example
    NDCG@k = 1 / log2(rank + 1) if rank <= k else 0, and the result is the mean
    over examples (a missing rank scores 0).

    Args:
        ranks: per example, the 1-based rank of the relevant item, or None.
        k: cut-off, >= 1.

    Returns:
        NDCG@k in [0, 1]; 0.0 for an empty list.

    Example:
        >>> round(ndcg_at_k([3], k=5), 4)  # 1 / log2(4)
        0.5
    """
    _check_k(k)
    if not ranks:
        return 0.0
    gains = [1.0 / math.log2(rank + 1) for rank in ranks if rank is not None and rank <= k]
    return sum(gains) / len(ranks)


def rmse(predictions: Sequence[float], targets: Sequence[float]) -> float:
    """Root mean squared error: sqrt((1/N) * sum_i (prediction_i - target_i)^2).

    Example:
        >>> rmse([1.0, 3.0], [2.0, 5.0])  # sqrt((1 + 4) / 2)
        1.5811388300841898
    """
    _check_pairs(predictions, targets)
    if not targets:
        return 0.0
    return math.sqrt(
        sum((p - t) ** 2 for p, t in zip(predictions, targets, strict=True)) / len(targets)
    )


def mae(predictions: Sequence[float], targets: Sequence[float]) -> float:
    """Mean absolute error: (1/N) * sum_i |prediction_i - target_i|.

    Example:
        >>> mae([1.0, 3.0], [2.0, 5.0])  # (1 + 2) / 2
        1.5
    """
    _check_pairs(predictions, targets)
    if not targets:
        return 0.0
    return sum(abs(p - t) for p, t in zip(predictions, targets, strict=True)) / len(targets)


# How an unparseable rating prediction enters RMSE/MAE. It is never dropped: it scores
# as the worst possible prediction on the rating scale, so a model cannot improve its
# RMSE/MAE by failing to answer.
UNPARSEABLE_RATING_RULE = (
    "unparseable rating predictions are kept: each scores as the rating-scale endpoint "
    "farthest from its target (worst case), and their count is reported"
)


def worst_case_rating(target: float, scale: tuple[float, float]) -> float:
    """The rating on ``scale`` farthest from ``target`` (the unparseable fallback).

    Example:
        >>> worst_case_rating(4.0, (1.0, 5.0))
        1.0
    """
    low, high = scale
    return low if abs(target - low) >= abs(high - target) else high


def rating_metrics(
    predictions: Sequence[float | None],
    targets: Sequence[float],
    scale: tuple[float, float] = (1.0, 5.0),
) -> dict[str, float]:
    """RMSE and MAE over ALL examples, with unparseable predictions (None) kept.

    A None prediction is replaced by :func:`worst_case_rating` (see
    UNPARSEABLE_RATING_RULE) before computing :func:`rmse` and :func:`mae`.
    Parsed predictions are used as they are (no clipping to the scale).

    Returns:
        ``{"rmse": ..., "mae": ...}``; count the None predictions to report them.

    Example:
        >>> rating_metrics([4.0, None], [5.0, 4.0])  # errors 1 and 3 (4 -> worst 1)
        {'rmse': 2.23606797749979, 'mae': 2.0}
    """
    _check_pairs(predictions, targets)
    filled = [
        worst_case_rating(t, scale) if p is None else p
        for p, t in zip(predictions, targets, strict=True)
    ]
    return {
        "rmse": rmse(filled, targets),
        "mae": mae(filled, targets),
    }


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 of sacrebleu (``corpus_bleu``), one reference per hypothesis.

    BLEU-4 = BP * exp(mean_{n=1..4} log p_n), p_n the clipped n-gram precisions
    pooled over the corpus, BP = min(1, exp(1 - ref_len / hyp_len)); sacrebleu's
    defaults: 13a tokenisation, case-sensitive, no smoothing beyond its "exp"
    default. Reported on sacrebleu's 0-100 scale (identical texts of >= 4 tokens
    give 100; a corpus with no matching 4-gram gives 0).
    """
    _check_pairs(hypotheses, references)
    if not hypotheses:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures of rouge-score (Porter stemming on).

    Per example, ROUGE-n F = 2PR / (P + R) over n-gram overlap, ROUGE-L over the
    longest common subsequence; the result is the mean over examples, on a 0-1
    scale (identical texts give 1).

    Returns:
        ``{"rouge1": ..., "rouge2": ..., "rougeL": ...}``; zeros for an empty list.
    """
    return mean_rouge(rouge_per_example(hypotheses, references), range(len(hypotheses)))


def rouge_per_example(
    hypotheses: Sequence[str], references: Sequence[str]
) -> list[dict[str, float]]:
    """ROUGE-1/2/L F-measure of each (hypothesis, reference) pair (see :func:`rouge`)."""
    _check_pairs(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    # rouge-score's signature is score(target, prediction).
    return [
        {name: score.fmeasure for name, score in scorer.score(reference, hypothesis).items()}
        for hypothesis, reference in zip(hypotheses, references, strict=True)
    ]


def mean_rouge(per_example: Sequence[dict[str, float]], rows: Sequence[int]) -> dict[str, float]:
    """:func:`rouge` of the examples ``rows`` (repeats allowed) from their per-example scores."""
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    if not rows:
        return totals
    for index in rows:
        for name in ROUGE_TYPES:
            totals[name] += per_example[index][name]
    return {name: total / len(rows) for name, total in totals.items()}


def accuracy(correct: Sequence[bool]) -> float:
    """Fraction of correct predictions; 0.0 for an empty list."""
    return sum(correct) / len(correct) if correct else 0.0


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"cut-off k must be >= 1, got {k}")


def _check_pairs(predictions: Sequence[object], targets: Sequence[object]) -> None:
    if len(predictions) != len(targets):
        raise ValueError(
            f"{len(predictions)} predictions but {len(targets)} targets: they must pair up"
        )


# ------------------------------------------------------------------ uncertainty


def mean_stderr(values: Sequence[float], clusters: Sequence[object] | None = None) -> float | None:
    """Standard error of the mean; None when it is undefined (< 2 values or clusters).

    Without ``clusters``: sample std (ddof=1) / sqrt(n). With ``clusters`` (e.g. the
    user of each example: one user answers several templates, so their examples are
    not independent), the cluster-robust form
    ``sqrt(G / (G - 1) * sum_g (sum_{i in g} (x_i - mean))^2) / n`` over G clusters,
    which equals the plain form when every cluster holds one value.

    Example:
        >>> mean_stderr([0.0, 1.0, 0.0, 1.0])  # std 0.5774 / 2
        0.28867513459481287
        >>> mean_stderr([0.0, 1.0, 0.0, 1.0], clusters=["a", "b", "c", "d"])
        0.28867513459481287
    """
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    if clusters is None:
        variance = sum((v - mean) ** 2 for v in values) / (n - 1)
        return math.sqrt(variance / n)
    _check_pairs(values, clusters)
    sums: dict[object, float] = {}
    for value, cluster in zip(values, clusters, strict=True):
        sums[cluster] = sums.get(cluster, 0.0) + (value - mean)
    groups = len(sums)
    if groups < 2:
        return None
    return math.sqrt(groups / (groups - 1) * sum(d * d for d in sums.values())) / n


def rmse_stderr(errors: Sequence[float], clusters: Sequence[object] | None = None) -> float | None:
    """Standard error of RMSE by the delta method: SE(MSE) / (2 RMSE); None if undefined.

    MSE is the mean of squared errors, so SE(MSE) is its standard error of the mean
    (cluster-robust with ``clusters``); RMSE = sqrt(MSE) gives d RMSE / d MSE =
    1 / (2 RMSE). Zero when every error is 0.
    """
    squared = [e * e for e in errors]
    se_mse = mean_stderr(squared, clusters)
    if se_mse is None:
        return None
    root = math.sqrt(sum(squared) / len(squared))
    return se_mse / (2 * root) if root > 0 else 0.0


def bootstrap_stderr(
    statistic: Callable[[Sequence[int]], float],
    n: int,
    seed: int,
    resamples: int = 200,
    clusters: Sequence[object] | None = None,
) -> float | None:
    """Standard error of a corpus-level statistic by a seeded bootstrap.

    Args:
        statistic: the metric computed on a list of example indices (with repeats).
        n: number of examples.
        seed: seeds the resampling (numpy PCG64), so the figure is reproducible.
        resamples: bootstrap replicates.
        clusters: per example, its cluster (user); whole clusters are resampled.

    Returns:
        The standard deviation (ddof=1) of the replicates; None with < 2 examples or
        clusters.
    """
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    if clusters is None:
        groups = [[i] for i in range(n)]
    else:
        members: dict[object, list[int]] = {}
        for index, cluster in enumerate(clusters):
            members.setdefault(cluster, []).append(index)
        groups = list(members.values())
    if len(groups) < 2:
        return None
    values = []
    for _ in range(resamples):
        picks = rng.integers(0, len(groups), size=len(groups)).tolist()
        values.append(float(statistic([i for g in picks for i in groups[g]])))
    return float(np.std(values, ddof=1))


def auc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties 1/2.

    The Mann-Whitney form (average ranks; ties share their mean rank), which is what
    TALLRec reports for yes/no answers. None when one class is absent. Written out
    (ten lines) rather than adding scikit-learn or scipy as a dependency for it.

    Example:
        >>> auc([0.9, 0.1, 0.4, 0.4], [True, False, True, False])  # 3.5 of 4 pairs
        0.875
    """
    _check_pairs(scores, positive)
    labels = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    values = np.asarray(scores, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    # Average 1-based rank of each run of equal scores.
    starts = np.flatnonzero(np.concatenate(([True], sorted_values[1:] != sorted_values[:-1])))
    ends = np.append(starts[1:], len(values))
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        ranks[order[start:end]] = (start + 1 + end) / 2
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))
