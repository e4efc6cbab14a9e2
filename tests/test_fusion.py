"""LM + SASRec rescoring: hand-made cases, weight chosen on valid only."""

from __future__ import annotations

import math

import pytest
import torch

from recsysllm.evaluation import EvalProtocol, evaluate_ranker
from recsysllm.evaluation.fusion import (
    FusionCase,
    FusionRanker,
    candidate_cases,
    choose_weight,
    fused_ranks,
    fusion_cases,
    lm_list_cases,
    rerank,
)
from recsysllm.schema import Example


def case(lm, sasrec, target, keys=("a", "b", "c")):
    return FusionCase(tuple(keys), tuple(lm), tuple(sasrec), target)


# The LM's favourite is "a"; SASRec's is "c"; the target "b" is both systems' second
# choice, so only a mixture puts it first (hand-computed scores in the tests below).
VALID = [
    case((-0.1, -1.0, -4.0), (-5.0, -1.0, -0.1), "b"),
    case((-0.2, -1.0, -3.0), (-4.0, -0.8, -0.3), "b"),
]


def test_rerank_hand_computed():
    first = VALID[0]
    # w = 0.5: a = -2.55, b = -1.0, c = -2.05 -> b, c, a.
    assert rerank(first, 0.5) == ["b", "c", "a"]
    # w = 0: the LM order; w = 1: SASRec's order.
    assert rerank(first, 0.0) == ["a", "b", "c"]
    assert rerank(first, 1.0) == ["c", "b", "a"]
    # w = 0.1: a = -0.59, b = -1.0, c = -3.61 -> a, b, c.
    assert rerank(first, 0.1) == ["a", "b", "c"]
    # Ties keep the LM's order.
    assert rerank(case((-1.0, -1.0, -1.0), (-2.0, -2.0, -2.0), "a"), 0.3) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="weight"):
        rerank(first, 1.5)


def test_choose_weight_on_valid_then_apply():
    best, scores = choose_weight(VALID, grid=(0.0, 0.1, 0.5, 1.0), k=1)
    # Case 1: b first for w in [0.2, 0.8] (hand check: w=0.5 above); case 2 at w=0.5:
    # a = -2.1, b = -0.9, c = -1.65 -> b first. w = 0 and 1 put b second: NDCG@1 = 0.
    assert scores == {0.0: 0.0, 0.1: 0.0, 0.5: 1.0, 1.0: 0.0}
    assert best == 0.5
    test = [
        case((-0.3, -0.9, -5.0), (-6.0, -1.1, -0.2), "b"),
        case((-1.0, -2.0, -3.0), (-1.0, -2.0, -3.0), "z"),
    ]
    assert fused_ranks(test, best) == [1, None]  # a target outside the list stays a miss


def test_choose_weight_ties_go_to_the_smaller_weight():
    same = [case((-0.1, -1.0, -2.0), (-0.1, -1.0, -2.0), "a")]
    best, scores = choose_weight(same, grid=(1.0, 0.3, 0.0))
    assert set(scores.values()) == {1.0}
    assert best == 0.0
    with pytest.raises(ValueError, match="at least one"):
        choose_weight([])


def test_fusion_cases_gather_sasrec_scores():
    index = {"a": 0, "b": 1, "c": 2, "d": 3}
    sasrec = torch.log_softmax(torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]]), dim=-1)
    cases = fusion_cases([[("c", -0.5), ("a", -0.7)], [("d", -0.1)]], sasrec, index, ["a", "d"])
    assert cases[0].candidates == ("c", "a")
    assert cases[0].lm_log_probs == (-0.5, -0.7)
    assert cases[0].sasrec_log_probs == pytest.approx((float(sasrec[0, 2]), float(sasrec[0, 0])))
    assert cases[1].sasrec_log_probs == pytest.approx((float(sasrec[1, 3]),))
    with pytest.raises(ValueError, match="not in the SASRec catalog"):
        fusion_cases([[("zz", -1.0)]], sasrec[:1], index, ["a"])
    with pytest.raises(ValueError, match="2 candidates"):
        FusionCase(("a", "b"), (-1.0,), (-1.0, -2.0), "a")


class FixedLM:
    """An LM ranker with fixed answers: (key, log-prob) lists and candidate scores."""

    def __init__(self, lists, candidate_scores):
        self.lists, self.candidate_scores = lists, candidate_scores

    def rank_all(self, examples, exclude, k):
        return [
            [(key, s) for key, s in items if key not in excluded][:k]
            for items, excluded in zip(self.lists, exclude, strict=True)
        ]

    def score_candidates(self, examples):
        return self.candidate_scores


def test_fusion_ranker_rows_in_the_harness():
    # Catalog a..d; one user whose SASRec history is ("d",).
    index = {"a": 0, "b": 1, "c": 2, "d": 3}
    log_probs = torch.log(torch.tensor([[0.05, 0.3, 0.6, 0.05]]))

    class FixedSASRec:
        def __init__(self):
            self.ranker = type("R", (), {"index": index})()

        def scores(self, examples):
            return log_probs.expand(len(examples), -1)

        def score_candidates(self, examples):
            return [[float(log_probs[0, index[k]]) for k in e.candidates] for e in examples]

    sequential = Example((), "sequential", "s-1", user="u", target="b", answer_type="item")
    direct = Example(
        (), "direct", "d-1", user="u", target="b", answer_type="item", candidates=("a", "b", "c")
    )
    lm = FixedLM(
        lists=[[("a", -0.2), ("b", -1.0), ("c", -3.0), ("d", -0.1)]],
        candidate_scores=[[-0.2, -1.0, -3.0]],
    )
    protocol = EvalProtocol(ks=(1, 2), exclude_history=True, history={"u": {"d"}})
    fusion = FusionRanker(lm, FixedSASRec(), weight=0.5, num_candidates=3)
    # "d" is excluded by the protocol before the LM ranks. Fused at w = 0.5:
    # a = (-0.2 + log .05) / 2 = -1.598, b = (-1.0 + log .3) / 2 = -1.102,
    # c = (-3.0 + log .6) / 2 = -1.755 -> b, a, c.
    results = evaluate_ranker("fusion", fusion, [sequential, direct], protocol)
    by_family = {o.family: o for o in results.outcomes}
    assert [key for key, _ in by_family["sequential"].top] == ["b", "a"]
    assert by_family["sequential"].top[0][1] == pytest.approx((-1.0 + math.log(0.3)) / 2)
    assert by_family["sequential"].rank == 1
    assert by_family["direct"].rank == 1
    # The LM alone puts "a" first on both.
    lm_alone = evaluate_ranker(
        "lm", FusionRanker(lm, FixedSASRec(), 0.0, 3), [sequential, direct], protocol
    )
    assert [o.rank for o in lm_alone.outcomes] == [2, 2]
    # Valid cases for choose_weight come from the same two rankers.
    cases = lm_list_cases(lm, FixedSASRec(), [sequential], [frozenset({"d"})], 3)
    assert cases[0].candidates == ("a", "b", "c")
    assert candidate_cases(lm, FixedSASRec(), [direct])[0].lm_log_probs == (-0.2, -1.0, -3.0)
    assert choose_weight(cases, grid=(0.0, 0.5), k=1)[0] == 0.5
