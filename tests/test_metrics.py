"""Metrics against hand-computed values; baselines on hand-built cases."""

from __future__ import annotations

import math

import pytest

from recsysllm.evaluation import metrics
from recsysllm.evaluation.baselines import (
    PopularityRanker,
    RandomRanker,
    evaluate_baselines,
    mean_ratings,
)
from recsysllm.evaluation.evaluator import EvalProtocol, EvaluationResults, ExampleOutcome
from recsysllm.evaluation.metrics import auc, bootstrap_stderr, mean_stderr, rmse_stderr
from recsysllm.schema import Example, Segment


def test_rank_at_3_and_6_by_hand():
    ranked = ["a", "b", "target", "c", "d", "e"]
    assert metrics.rank_of("target", ranked) == 3
    assert metrics.hit_rate_at_k([3], 5) == 1.0
    assert metrics.ndcg_at_k([3], 5) == pytest.approx(1 / math.log2(4))  # = 0.5
    assert metrics.hit_rate_at_k([6], 5) == 0.0
    assert metrics.ndcg_at_k([6], 5) == 0.0
    # A target the beam never returned is a miss at every k.
    assert metrics.rank_of("zzz", ranked) is None
    assert metrics.hit_rate_at_k([None], 10) == 0.0


def test_ranking_means_over_examples():
    ranks = [1, 2, 6, None]
    assert metrics.hit_rate_at_k(ranks, 1) == 0.25
    assert metrics.hit_rate_at_k(ranks, 5) == 0.5
    assert metrics.hit_rate_at_k(ranks, 10) == 0.75
    # (1/log2(2) + 1/log2(3)) / 4 at k=5; rank 6 adds 1/log2(7) at k=10.
    assert metrics.ndcg_at_k(ranks, 5) == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert metrics.ndcg_at_k(ranks, 10) == pytest.approx(
        (1 + 1 / math.log2(3) + 1 / math.log2(7)) / 4
    )
    with pytest.raises(ValueError, match="k must be >= 1"):
        metrics.hit_rate_at_k(ranks, 0)


def test_rmse_mae_by_hand():
    predictions, targets = [3.0, 5.0, 1.0], [4.0, 3.0, 1.0]  # errors -1, 2, 0
    assert metrics.rmse(predictions, targets) == pytest.approx(math.sqrt(5 / 3))
    assert metrics.mae(predictions, targets) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 predictions but 3 targets"):
        metrics.rmse([1.0, 2.0], targets)


def test_unparseable_ratings_are_kept_as_worst_case():
    # Targets 5 and 2 on a 1-5 scale: worst cases are 1 (error 4) and 5 (error 3).
    assert metrics.worst_case_rating(5.0, (1.0, 5.0)) == 1.0
    assert metrics.worst_case_rating(2.0, (1.0, 5.0)) == 5.0
    scores = metrics.rating_metrics([None, None, 4.0], [5.0, 2.0, 4.0])
    assert scores["mae"] == pytest.approx((4 + 3 + 0) / 3)
    assert scores["rmse"] == pytest.approx(math.sqrt((16 + 9 + 0) / 3))


def test_bleu_and_rouge_of_identical_texts():
    texts = ["the fabric is soft and the fit is great", "runs small so order a size up"]
    assert metrics.bleu4(texts, texts) == pytest.approx(100.0)
    assert metrics.rouge(texts, texts) == pytest.approx(
        {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    )


def test_bleu_and_rouge_by_hand():
    # No shared word: everything is 0.
    assert metrics.bleu4(["alpha beta gamma delta"], ["one two three four"]) == 0.0
    assert metrics.rouge(["alpha beta"], ["one two"])["rouge1"] == 0.0
    # Hypothesis "a b" vs reference "a b c d": unigram P = 1, R = 1/2 -> F = 2/3;
    # bigram P = 1 ("a b"), R = 1/3 -> F = 1/2; LCS 2 -> same as ROUGE-1.
    scores = metrics.rouge(["cat dog"], ["cat dog fish bird"])
    assert scores["rouge1"] == pytest.approx(2 / 3)
    assert scores["rouge2"] == pytest.approx(1 / 2)
    assert scores["rougeL"] == pytest.approx(2 / 3)


def test_popularity_excludes_history_and_breaks_ties_by_key():
    ranker = PopularityRanker({"a": 3, "b": 5, "c": 3, "d": 1}, ["a", "b", "c", "d", "e"])
    assert ranker.rank_all() == ["b", "a", "c", "d", "e"]
    assert ranker.rank_all(history=["b", "c"]) == ["a", "d", "e"]
    assert ranker.rank_candidates(["e", "d", "b"]) == ["b", "d", "e"]
    with pytest.raises(ValueError, match="not in the catalog"):
        PopularityRanker({"zzz": 1}, ["a"])


def test_random_ranker_is_seeded_and_reproducible():
    items = [f"item {i}" for i in range(50)]
    first = RandomRanker(items, seed=7)
    again = RandomRanker(list(reversed(items)), seed=7)  # catalog order must not matter
    other_seed = RandomRanker(items, seed=8)
    assert first.rank_all("u1") == again.rank_all("u1")
    assert sorted(first.rank_all("u1")) == sorted(items)
    assert first.rank_all("u1") != other_seed.rank_all("u1")
    assert first.rank_all("u1") != first.rank_all("u2")
    candidates = items[:10]
    assert first.rank_candidates("u1", candidates) == again.rank_candidates("u1", candidates)
    assert sorted(first.rank_candidates("u1", candidates)) == sorted(candidates)


def _item_example(user, target, history=(), candidates=(), template="t1", seen=True):
    return Example(
        segments=(Segment("next: "), Segment(target, entity=target, answer=True)),
        task="direct" if candidates else "sequential",
        template_id=template,
        seen=seen,
        user=user,
        target=target,
        answer_mask="mask",
        answer_type="item",
        candidates=tuple(candidates),
        history=tuple(history),
    )


def test_evaluate_baselines_on_hand_built_case():
    items = ["a", "b", "c", "d"]
    counts = {"a": 10, "b": 5, "c": 1}
    examples = [
        # Popularity ranks b, c, d after excluding history "a": target c at rank 2.
        _item_example("u1", "c", history=["a"]),
        # Without history: a, b, c, d -> target a at rank 1.
        _item_example("u2", "a", template="t2", seen=False),
        # Candidates d, b: popularity b (5) before d (0) -> target d at rank 2.
        _item_example("u1", "d", candidates=["d", "b"]),
    ]
    rating = Example(
        segments=(Segment("stars: "), Segment("4", answer=True)),
        task="rating",
        template_id="r1",
        user="u1",
        target="4",
        answer_mask="mask",
        answer_type="rating",
    )
    protocol = EvalProtocol(ks=(1, 5), history={"u1": {"a"}, "u2": set()}, seed=3)
    systems = evaluate_baselines(
        [*examples, rating],
        items=items,
        item_counts=counts,
        user_ratings={"u1": [5.0, 3.0, 4.0, 2.0], "u2": [1.0, float("nan")]},
        protocol=protocol,
    )
    assert set(systems) == {"popularity", "random", "global_mean", "user_mean"}
    assert [o.rank for o in systems["popularity"].outcomes] == [2, 1, 2]
    # Random ranks are permutations of the right length and reproducible.
    again = evaluate_baselines(examples, items=items, item_counts=counts, protocol=protocol)
    assert [o.rank for o in again["random"].outcomes] == [
        o.rank for o in systems["random"].outcomes
    ]
    assert all(1 <= o.rank <= 4 for o in systems["random"].outcomes)
    # Global mean (5+3+4+2+1)/5 = 3; user mean of u1 = 3.5.
    assert mean_ratings({"u1": [5.0, 3.0, 4.0, 2.0], "u2": [1.0]})[0] == pytest.approx(3.0)
    assert systems["global_mean"].outcomes[0].rating == pytest.approx(3.0)
    assert systems["user_mean"].outcomes[0].rating == pytest.approx(3.5)
    rows = {(r["family"], r["split"]): r for r in systems["user_mean"].aggregated()}
    assert rows[("rating", "seen")]["metrics"]["MAE"] == pytest.approx(0.5)


def test_results_group_per_template_and_aggregate_seen_unseen():
    def outcome(template, seen, rank):
        return ExampleOutcome("sequential", template, seen, "all_items", f"u{rank}", "x", rank=rank)

    results = EvaluationResults(
        system="model",
        outcomes=[outcome("s1", True, 1), outcome("s1", True, 7), outcome("u1", False, None)],
        protocol=EvalProtocol(ks=(1, 5, 10)),
    )
    per_template = {row["template_id"]: row for row in results.per_template()}
    assert per_template["s1"]["count"] == 2
    assert per_template["s1"]["metrics"]["HR@1"] == 0.5
    assert per_template["s1"]["metrics"]["HR@10"] == 1.0
    assert per_template["s1"]["metrics"]["NDCG@10"] == pytest.approx((1 + 1 / math.log2(8)) / 2)
    assert "NDCG@1" not in per_template["s1"]["metrics"]
    aggregated = {row["split"]: row for row in results.aggregated()}
    assert aggregated["seen"]["templates"] == ["s1"]
    assert aggregated["unseen"]["metrics"]["HR@10"] == 0.0
    assert aggregated["all"]["count"] == 3
    assert aggregated["all"]["metrics"]["HR@10"] == pytest.approx(2 / 3)
    # Standard error of a hit rate: sample std / sqrt(n); hits (1, 1, 0) -> sqrt(1/3) / sqrt(3).
    assert aggregated["all"]["stderr"]["HR@10"] == pytest.approx(math.sqrt(1 / 3) / math.sqrt(3))
    assert per_template["u1"]["stderr"]["HR@10"] is None  # one example: undefined


def test_every_row_shares_one_exclusion_setting():
    """Popularity follows the table's setting: it excludes the whole history only when
    the protocol says so (it used to exclude always, next to a model that did not)."""
    items = ["a", "b", "c"]
    counts = {"a": 10, "b": 5, "c": 1}
    example = _item_example("u1", "a", history=[])  # the prompt shows no history ...
    history = {"u1": {"a"}}  # ... but the user interacted with "a" before the target
    excluded = evaluate_baselines(
        [example], items=items, item_counts=counts, protocol=EvalProtocol(history=history)
    )
    assert excluded["popularity"].outcomes[0].rank is None  # "a" can never be returned
    assert excluded["popularity"].outcomes[0].top[0][0] == "b"
    assert all(key != "a" for key, _ in excluded["random"].outcomes[0].top)
    kept = evaluate_baselines(
        [example],
        items=items,
        item_counts=counts,
        protocol=EvalProtocol(exclude_history=False, history=history),
    )
    assert kept["popularity"].outcomes[0].rank == 1


def test_history_items_are_everything_before_the_target():
    """Exclusion covers every earlier interaction, not the <= 20 sampled into a prompt."""
    from test_splits import make_tables

    from recsysllm.data.splits import build_splits
    from recsysllm.evaluation.evaluator import history_items

    splits = build_splits(make_tables([("u", f"i{t}", t) for t in range(40)]), k=1, num_negatives=0)
    test = history_items(splits, "test")["u"]
    assert len(test) == 39 and "Title i39" not in test and "Title i38" in test
    assert len(history_items(splits, "valid")["u"]) == 38


def test_auc_and_standard_errors_against_hand_computed_values():
    # 2 positives x 2 negatives: pairs (0.9>0.1) (0.9>0.4) (0.4=0.4: 1/2) (0.4>0.1) = 3.5/4.
    assert auc([0.9, 0.1, 0.4, 0.4], [True, False, True, False]) == pytest.approx(0.875)
    assert auc([1.0, 2.0], [True, True]) is None
    assert auc([0.0, 1.0], [True, False]) == 0.0
    assert mean_stderr([1.0, 2.0, 3.0]) == pytest.approx(1.0 / math.sqrt(3))
    # Clustered by user: (1, 1) and (0, 0) are two users, not four independent draws:
    # cluster sums of deviations +1, -1 -> sqrt(2 / 1 * 2) / 4 = 0.5 (plain: 0.2887).
    assert mean_stderr([1.0, 1.0, 0.0, 0.0], clusters=["a", "a", "b", "b"]) == pytest.approx(0.5)
    assert mean_stderr([1.0, 0.0], clusters=["a", "a"]) is None
    # RMSE delta method: errors (1, 3): MSE 5, SE(MSE) = std(1, 9)/sqrt(2) = 4; SE = 4 / (2 sqrt 5).
    assert rmse_stderr([1.0, -3.0]) == pytest.approx(4 / (2 * math.sqrt(5)))
    # The bootstrap is seeded: same seed, same figure.
    first = bootstrap_stderr(lambda rows: sum(rows) / len(rows), 10, seed=1)
    assert first == bootstrap_stderr(lambda rows: sum(rows) / len(rows), 10, seed=1)
    assert 0 < first < 5


def test_out_of_scale_ratings_are_counted_and_scored_as_worst_case():
    outcomes = [
        ExampleOutcome("rating", "r", True, "rating", "u", "4", rating=-3.0, text=" -3"),
        ExampleOutcome("rating", "r", True, "rating", "u", "2", rating=4.0, text="4"),
    ]
    row = EvaluationResults(system="model", outcomes=outcomes).aggregated()[0]
    assert row["out_of_scale"] == 1 and row["unparseable"] == 0
    # -3 for target 4 scores as the worst case 1 (error 3); 4 for 2: error 2.
    assert row["metrics"]["MAE"] == pytest.approx(2.5)


def test_training_statistics_count_only_what_precedes_the_evaluated_targets():
    """Leave-one-out users give all but the last two (valid) or last one (test) events;
    users with fewer than three events count only where they are train users."""
    import datasets

    from recsysllm.data.splits import build_splits, short_user_split
    from recsysllm.data.tables import RecTables
    from recsysllm.evaluation.baselines import training_statistics

    rows = [  # (user, item, timestamp, rating)
        ("long", "a", 1, 5.0), ("long", "b", 2, 4.0), ("long", "c", 3, 3.0), ("long", "d", 4, 2.0),
    ]  # fmt: skip
    # Short users (one event each) until each split has one: their split is a seeded hash.
    short_by_split: dict[str, str] = {}
    index = 0
    while len(short_by_split) < 3:
        user = f"short{index}"
        short_by_split.setdefault(short_user_split(0, user), user)
        index += 1
    for split, user in short_by_split.items():
        rows.append((user, {"train": "e", "valid": "b", "test": "c"}[split], 5, 1.0))
    interactions = datasets.Dataset.from_dict(
        {
            "user": [r[0] for r in rows],
            "item": [r[1] for r in rows],
            "timestamp": [r[2] for r in rows],
            "rating": [r[3] for r in rows],
            "review": [""] * len(rows),
            "summary": [""] * len(rows),
        }
    )
    items = datasets.Dataset.from_dict({"item": list("abcde"), "title": list("ABCDE")})
    users = datasets.Dataset.from_dict({"user": sorted({r[0] for r in rows})})
    splits = build_splits(
        RecTables("toy", interactions, items, users), k=1, seed=0, num_negatives=1
    )

    counts, ratings = training_statistics(splits, "valid")
    # long: a, b (train); short train user: e. Valid/test targets and short eval users: nothing.
    assert counts == {"A": 1, "B": 1, "E": 1}
    assert ratings["long"] == [5.0, 4.0]
    assert ratings[short_by_split["train"]] == [1.0]
    assert short_by_split["valid"] not in ratings

    counts, ratings = training_statistics(splits, "test")
    # + the valid targets: long's c and the short valid user's B.
    assert counts == {"A": 1, "B": 2, "C": 1, "E": 1}
    assert ratings["long"] == [5.0, 4.0, 3.0]
    assert ratings[short_by_split["valid"]] == [1.0]
    assert short_by_split["test"] not in ratings
