"""The extra rows of a results table: SASRec, fusion (weight chosen on valid only),
model+pmi (prior-corrected scores, alpha chosen on valid only), diversity columns."""

from __future__ import annotations

import math

import pytest
import torch
from test_sasrec import successor_splits

from recsysllm.evaluation import EvalProtocol, evaluate_ranker, history_items
from recsysllm.evaluation import rows as rows_module
from recsysllm.evaluation.diversity import diversity_metrics
from recsysllm.evaluation.evaluator import (
    EvaluationResults,
    ExampleOutcome,
    PMIRanker,
    PriorCase,
    choose_alpha,
    pmi_rerank,
    pmi_scores,
)
from recsysllm.evaluation.fusion import DEFAULT_GRID
from recsysllm.evaluation.rows import RowSettings, extra_rows
from recsysllm.schema import Example

SPLITS = successor_splits()
KEYS = sorted(set(SPLITS.item_keys.values()))  # "Title x00" ... "Title x19"
A, B, C, D = (f"Title x{i}" for i in (10, 11, 12, 13))  # in no history of users u0, u2


class FixedLM:
    """A model ranker with fixed answers, keyed by the example's target and family.

    ``lists``: the model's own (unguided) top-N per target; ``every``: its log-probability
    of more items per target, which an exhaustive guided search ranks (default: the list).
    """

    def __init__(self, lists, candidate_scores, every=None):
        self.lists, self.candidate_scores = lists, candidate_scores
        self.every = every or {target: dict(items) for target, items in lists.items()}
        self.num_beams = 3
        self.calls = 0
        self.guided_weights = []

    def rank_all_guided(self, examples, exclude, k, prior_keys, prior_log_probs, weight):
        """As ``ModelRanker``: weight 0 is ``rank_all``; else the exact fused top-k."""
        if weight == 0:
            return self.rank_all(examples, exclude, k)
        self.guided_weights.append(weight)
        column = {key: i for i, key in enumerate(prior_keys)}
        ranked = []
        for row, (example, excluded) in enumerate(zip(examples, exclude, strict=True)):
            fused = {
                key: (1 - weight) * lm + weight * float(prior_log_probs[row, column[key]])
                for key, lm in self.every[example.target].items()
                if key not in excluded
            }
            ranked.append(sorted(fused.items(), key=lambda pair: -pair[1])[:k])
        return ranked

    def rank_all(self, examples, exclude, k):
        self.calls += 1
        return [
            [(key, s) for key, s in self.lists[e.target] if key not in excluded][:k]
            for e, excluded in zip(examples, exclude, strict=True)
        ]

    def score_candidates(self, examples):
        return [list(self.candidate_scores[e.target]) for e in examples]


class FixedSASRec:
    """A "trained" SASRec whose next-item distribution ignores the history."""

    def __init__(self, probabilities):
        self.items = tuple(KEYS)
        self.index = {key: i for i, key in enumerate(KEYS)}
        rest = (1.0 - sum(probabilities.values())) / (len(KEYS) - len(probabilities))
        row = [probabilities.get(key, rest) for key in KEYS]
        self.row = torch.log(torch.tensor(row, dtype=torch.float64))

    def score_all(self, histories):
        return self.row.expand(len(histories), -1).clone()


def sequential(user, target):
    return Example((), "sequential", "s-1", user=user, target=target, answer_type="item")


def direct(user, target, candidates):
    return Example(
        (), "direct", "d-1", user=user, target=target, answer_type="item", candidates=candidates
    )


def protocols():
    test = EvalProtocol(ks=(1, 5, 10), history=history_items(SPLITS, "test"), catalog_size=20)
    valid = EvalProtocol(ks=(1, 5, 10), history=history_items(SPLITS, "valid"), catalog_size=20)
    return test, valid


def test_fusion_weight_is_chosen_on_valid_not_test(monkeypatch):
    """Valid and test have opposite optima: valid wants SASRec (w >= 0.6), test the LM
    alone (w = 0). The row must use valid's weight, so it loses on test."""
    sasrec = FixedSASRec({A: 0.6, B: 0.3, C: 0.04, D: 0.04})
    facts = {
        "cache": "reused",
        "seed": 0,
        "epochs": 3,
        "stopped": "early stopping",
        "capped": False,
    }
    monkeypatch.setattr(rows_module, "fit_cached", lambda *args, **kwargs: (sasrec, facts))
    # Valid: the target A is the LM's third, SASRec's first. Fused at w (log .6 = -0.511,
    # log .04 = -3.219): A = -3 + 2.489w, C = -0.1 - 3.119w, D = -0.5 - 2.719w: A is
    # first iff w > 0.517, second for w in (0.48, 0.517], third below.
    # Test: the target C is the LM's first; at w = 0.6, A = -1.106, B = -1.722,
    # C = -1.971: C is third.
    lm = FixedLM(
        lists={
            A: [(C, -0.1), (D, -0.5), (A, -3.0)],  # valid sequential, target A
            C: [(C, -0.1), (A, -2.0), (B, -2.5)],  # test sequential, target C
        },
        candidate_scores={A: (-0.1, -3.0, -0.5), C: (-0.1, -2.0, -2.5)},
    )
    valid_examples = [
        sequential("u0", A), sequential("u2", A), direct("u0", A, (C, A, D)),
    ]  # fmt: skip
    test_examples = [sequential("u0", C), sequential("u2", C), direct("u2", C, (C, A, B))]
    test, valid = protocols()
    # The rescoring grid, so both rows choose over the same weights.
    settings = RowSettings(sasrec=True, fusion=True, num_candidates=3, fusion_grid=DEFAULT_GRID)
    rows, facts_out = extra_rows(
        lm=lm,
        splits=SPLITS,
        split="test",
        examples=test_examples,
        protocol=test,
        valid_examples=valid_examples,
        valid_protocol=valid,
        settings=settings,
    )
    fusion = facts_out["fusion"]
    assert fusion["weights"] == {"all_items": 0.6, "candidates": 0.6}
    grid = fusion["valid_ndcg"]["all_items"]
    assert grid["0.4"] == pytest.approx(0.5) and grid["0.5"] == pytest.approx(1 / math.log2(3))
    assert grid["0.6"] == grid["1"] == pytest.approx(1.0)
    assert fusion["chosen_on"] == {
        "split": "valid", "examples": 3, "users": 2, "same_as_evaluated": False
    }  # fmt: skip
    # On test the chosen weight puts the target third; the LM alone had it first.
    assert [o.rank for o in rows["fusion"].outcomes] == [3, 3, 3]
    assert [o.rank for o in evaluate_ranker("lm", lm, test_examples, test).outcomes] == [1, 1, 1]
    top = rows["fusion"].outcomes[0].top
    assert [key for key, _ in top] == [A, B, C]
    assert top[0][1] == pytest.approx(0.4 * -2.0 + 0.6 * math.log(0.6))
    # The lists hold every item the guided search could find: both rows agree here.
    assert facts_out["fusion-rescore"]["weights"] == {"all_items": 0.6}
    assert [o.rank for o in rows["fusion-rescore"].outcomes] == [3, 3]  # sequential only
    assert rows["fusion-rescore"].outcomes[0].top == top
    # The SASRec row: same examples and users as the model's, SASRec's own ranking.
    sasrec_row = rows["SASRec"]
    assert [(o.user, o.family) for o in sasrec_row.outcomes] == [
        (e.user, e.task) for e in test_examples
    ]
    assert [key for key, _ in sasrec_row.outcomes[0].top[:2]] == [A, B]
    assert sasrec_row.outcomes[2].rank == 3  # C (.04) after A (.6) and B (.3)
    assert facts_out["SASRec"] is facts


def test_guided_fusion_reaches_past_the_list_and_its_weight_comes_from_valid(monkeypatch):
    """The guided row finds a target outside the model's own top-2 (the rescoring row
    never can), and its weight is the valid optimum even where test prefers w = 0."""
    sasrec = FixedSASRec({A: 0.6, B: 0.3, C: 0.04, D: 0.04})
    facts = {"cache": "reused", "epochs": 3, "stopped": "early stopping", "capped": False}
    monkeypatch.setattr(rows_module, "fit_cached", lambda *args, **kwargs: (sasrec, facts))
    lm = FixedLM(
        lists={A: [(C, -0.1), (D, -0.5)], C: [(C, -0.1), (A, -2.0)]},  # the model's top-2
        candidate_scores={A: (-0.1, -3.0, -0.5), C: (-0.1, -2.0, -2.5)},
        every={A: {C: -0.1, D: -0.5, A: -3.0}, C: {C: -0.1, A: -2.0, B: -2.5}},
    )
    valid_examples = [sequential("u0", A), sequential("u2", A)]
    test_examples = [sequential("u0", C), sequential("u2", C)]
    test, valid = protocols()
    settings = RowSettings(num_candidates=2, fusion_grid=(0.0, 0.5, 0.7, 1.0))
    rows, out = extra_rows(
        lm=lm, splits=SPLITS, split="test", examples=test_examples, protocol=test,
        valid_examples=valid_examples, valid_protocol=valid, settings=settings,
    )  # fmt: skip
    # Valid, target A (log .6 = -0.511; C, D: log .04 = -3.219): w 0 is the model's
    # list, without A; w .5: C -1.659, A -1.755, D -1.859 (A second); w .7: A first.
    grid = out["fusion"]["valid_ndcg"]["all_items"]
    assert grid == pytest.approx({"0": 0.0, "0.5": 1 / math.log2(3), "0.7": 1.0, "1": 1.0})
    assert out["fusion"]["weights"]["all_items"] == 0.7
    assert out["fusion"]["grid"]["all_items"] == [0.0, 0.5, 0.7, 1.0]
    assert lm.guided_weights == [0.5, 0.7, 1.0, 0.7]  # three valid searches, then test
    # Rescoring the top-2 never reaches A on valid: every weight scores 0, so w = 0.
    assert set(out["fusion-rescore"]["valid_ndcg"]["all_items"].values()) == {0.0}
    assert out["fusion-rescore"]["weights"] == {"all_items": 0.0}
    # Test, target C at w .7: A = .3 * -2 + .7 * log .6 = -0.958, B = -1.593, C = -2.283.
    (first, second) = rows["fusion"].outcomes
    assert [key for key, _ in first.top] == [A, B, C] and first.rank == second.rank == 3
    assert [s for _, s in first.top] == pytest.approx(
        [0.3 * -2.0 + 0.7 * math.log(0.6), 0.3 * -2.5 + 0.7 * math.log(0.3),
         0.3 * -0.1 + 0.7 * math.log(0.04)]
    )  # fmt: skip
    assert [o.rank for o in rows["fusion-rescore"].outcomes] == [1, 1]
    assert "fusion-rescore" in rows and list(rows) == ["SASRec", "fusion", "fusion-rescore"]


def test_no_valid_examples_of_a_variant_keeps_the_model_alone(monkeypatch):
    sasrec = FixedSASRec({A: 0.6})
    facts = {"cache": "trained", "epochs": 1, "stopped": "time cap", "capped": True}
    monkeypatch.setattr(rows_module, "fit_cached", lambda *a, **k: (sasrec, facts))
    lm = FixedLM({C: [(C, -0.1), (A, -2.0)]}, {})
    test, valid = protocols()
    rows, facts = extra_rows(
        lm=lm, splits=SPLITS, split="test", examples=[sequential("u0", C)], protocol=test,
        valid_examples=[], valid_protocol=valid, settings=RowSettings(num_candidates=2),
    )  # fmt: skip
    assert facts["fusion"]["weights"] == {"all_items": 0.0, "candidates": 0.0}
    assert "no valid examples" in facts["fusion"]["valid_ndcg"]["all_items"]
    assert rows["fusion"].outcomes[0].rank == 1


# ------------------------------------------------------------------------------ PMI


class FixedPriors:
    def __init__(self, all_items, candidates):
        self._all, self._candidates = all_items, candidates

    def all_items(self, example):
        return self._all

    def candidates(self, example):
        return self._candidates[example.target]


def test_pmi_scores_hand_computed():
    assert pmi_scores([-1.0, -1.5, -2.0], [-0.2, -2.0, -1.0], 1.0) == pytest.approx(
        [-0.8, 0.5, -1.0]
    )
    case = PriorCase(("a", "b", "c"), (-1.0, -1.5, -2.0), (-0.2, -2.0, -1.0), "b")
    # alpha 1: a -0.8, b 0.5, c -1.0; alpha 0.2: a -0.96, b -1.1, c -1.8.
    assert [key for key, _ in pmi_rerank(case, 1.0)] == ["b", "a", "c"]
    assert [key for key, _ in pmi_rerank(case, 0.2)] == ["a", "b", "c"]
    # b overtakes a when -1.5 + 2a > -1 + 0.2a, i.e. alpha > 5/18 = 0.278.
    best, scores = choose_alpha([case], grid=(0.0, 0.2, 0.3, 1.0), k=1)
    assert scores == {0.0: 0.0, 0.2: 0.0, 0.3: 1.0, 1.0: 1.0} and best == 0.3


def test_pmi_row_uses_the_alpha_of_valid_and_the_hand_computed_ranking(monkeypatch):
    """Valid wants a large alpha (the target is rare under the prior); test is best at 0."""
    prior = {A: -0.1, B: -3.0, C: -3.0, D: -0.5}
    lm = FixedLM(
        lists={
            B: [(A, -1.0), (D, -1.2), (B, -2.0)],  # valid: target B, prior -3.0
            A: [(A, -1.0), (B, -2.0), (C, -2.2)],  # test: target A, the prior's favourite
        },
        candidate_scores={B: (-1.0, -2.0), A: (-1.0, -2.0)},
    )
    priors = FixedPriors(prior, {B: [-0.1, -3.0], A: [-0.1, -3.0]})
    monkeypatch.setattr(rows_module, "ItemPriors", lambda inference, prompt_set: priors)
    lm.inference = None
    valid_examples = [sequential("u0", B), direct("u0", B, (A, B))]
    test_examples = [sequential("u2", A), direct("u2", A, (A, B))]
    test, valid = protocols()
    settings = RowSettings(sasrec=False, pmi=True, num_candidates=3)
    rows, facts = extra_rows(
        lm=lm, splits=SPLITS, split="test", examples=test_examples, protocol=test,
        valid_examples=valid_examples, valid_protocol=valid, settings=settings, prompt_set=object(),
    )  # fmt: skip
    assert set(rows) == {"model+pmi"}
    # Valid sequential: B = -2 + 3a beats A = -1 + 0.1a iff a > 1/2.9 = 0.345 and
    # D = -1.2 + 0.5a iff a > 0.32: alpha 0.4. Direct: B = -2 + 3a > -1 + 0.1a: 0.4.
    assert facts["model+pmi"]["alphas"] == {"all_items": 0.4, "candidates": 0.4}
    # Test at alpha 0.4: A = -0.96, B = -0.8, C = -1.0 -> B, A, C (A second).
    outcome = rows["model+pmi"].outcomes[0]
    assert [key for key, _ in outcome.top] == [B, A, C]
    assert outcome.top[0][1] == pytest.approx(-2.0 + 0.4 * 3.0)
    assert outcome.rank == 2 and rows["model+pmi"].outcomes[1].rank == 2
    ranker = PMIRanker(lm, priors, 0.0, 0.0, 3)
    assert [o.rank for o in evaluate_ranker("m", ranker, test_examples, test).outcomes] == [1, 1]


# ------------------------------------------------------------------------ diversity


def test_every_ranking_aggregate_carries_diversity():
    def outcome(user, top, variant="all_items", family="sequential"):
        return ExampleOutcome(
            family=family, template_id="t", seen=True, variant=variant, user=user,
            target=top[0], rank=1, top=tuple((key, 0.0) for key in top),
        )  # fmt: skip

    lists = [["a", "b", "c"], ["a", "d", "e"], ["a", "b", "f"]]
    protocol = EvalProtocol(ks=(1, 2), catalog_size=50)
    results = EvaluationResults(
        "x", [outcome(f"u{i}", top) for i, top in enumerate(lists)], protocol
    )
    (row,) = [r for r in results.aggregated() if r["split"] == "all"]
    # k = max(ks) = 2: the first two slots of each list.
    assert row["diversity"]["k"] == 2
    assert row["diversity"]["coverage"] == pytest.approx(3 / 50)  # a, b, d
    assert row["diversity"]["top item share"] == pytest.approx(3 / 6)
    assert row["diversity"] == {"k": 2, **diversity_metrics([t[:2] for t in lists], 50)}
    rating = ExampleOutcome("rating", "r", True, "rating", "u0", "4", rating=4.0)
    assert "diversity" not in EvaluationResults("x", [rating], protocol).aggregated()[0]
    assert "diversity" not in EvaluationResults("x", results.outcomes).aggregated()[0]


# ------------------------------------------------------------------ bench_quality rows


def _bench_quality():
    from conftest import load_benchmark

    return load_benchmark("bench_quality")


def test_bench_quality_rows_and_append(tmp_path):
    bench = _bench_quality()

    def aggregate(family, variant, hr10, split="all"):
        metrics = {"HR@1": 0.1, "HR@5": 0.2, "HR@10": hr10, "NDCG@5": 0.15, "NDCG@10": 0.18}
        return {
            "family": family, "variant": variant, "split": split, "count": 40, "users": 10,
            "metrics": metrics, "stderr": {m: 0.01 for m in metrics},
            "diversity": {"coverage": 0.25},
        }  # fmt: skip

    document = {
        "model": {
            "aggregated": [
                aggregate("sequential", "all_items", 0.3, split="seen"),
                aggregate("sequential", "all_items", 0.3),
                {"family": "rating", "variant": "rating", "split": "all"},
            ]
        },
        "baselines": {
            "SASRec": {"aggregated": [aggregate("sequential", "all_items", 0.2)]},
            "fusion": {"aggregated": [aggregate("sequential", "all_items", 0.4)]},
        },
        "rows": {"SASRec": {"capped": True}, "fusion": {"weights": {"all_items": 0.3}}},
    }
    facts = {
        "date": "2026-11-30", "config": "c.yaml", "backbone": "b", "steps": 7, "seed": 1,
        "train_s": "5", "eval_s": "6", "machine": "m",
    }  # fmt: skip
    (row,) = bench.table_rows(document, facts)
    cells = dict(zip(bench.COLUMNS, row, strict=True))
    assert cells["family (variant)"] == "sequential (all_items)" and cells["n (users)"] == "40 (10)"
    assert cells["HR@10"] == "0.3000 ± 0.0100" and cells["coverage@10"] == "0.250"
    assert cells["SASRec"] == "0.2000 ± 0.0100 / 0.1800 ± 0.0100 (lower bound)"
    assert cells["fusion (w)"].endswith("(w 0.3)") and cells["popularity"] == "-"

    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n## Speed\n\n| a |\n|---|\n| 1 |\n")
    bench.append_rows(results, [row])
    # Notes with a table of their own under the rows, then a later section.
    notes = "\nNotes.\n\n| note |\n|---|\n\n## Later\n\n| z |\n|---|\n"
    results.write_text(results.read_text() + notes)
    bench.append_rows(results, [row])
    text = results.read_text()
    assert text.count(bench.TABLE_HEADING) == 1 and text.count("| date |") == 1
    lines = text.splitlines()
    header = lines.index(bench.md_row(bench.COLUMNS))
    assert lines[header + 2].startswith("| 2026-11-30 |") and lines[header + 3] == lines[header + 2]
    assert lines[header + 4 :] == [
        "",
        "Notes.",
        "",
        "| note |",
        "|---|",
        "",
        "## Later",
        "",
        "| z |",
        "|---|",
    ]
    assert "| 1 |" in text


def test_weights_are_chosen_on_the_evaluated_users_valid_targets():
    from types import SimpleNamespace

    from recsysllm.evaluation.cli import valid_selection

    valid_examples = [sequential(f"u{i}", A) for i in range(10)]
    data = SimpleNamespace(
        tasks=SimpleNamespace(examples=lambda split, families, prompts, seed: valid_examples),
        splits=SPLITS,
    )
    test, _ = protocols()

    def select(users, limit=None):
        examples = [sequential(user, C) for user in users]
        return valid_selection(data, examples, ["sequential"], "all", None, [], test, limit, 0)

    chosen, protocol = select(["u0", "u2"])
    assert [e.user for e in chosen] == ["u0", "u2"]
    assert protocol.history == history_items(SPLITS, "valid") and protocol.ks == test.ks
    assert len(select(["u0", "u2", "u3"], limit=2)[0]) == 2
    # Users without valid targets (short users): as many other valid users instead.
    chosen, _ = select(["new1", "new2", "new3"])
    assert len({e.user for e in chosen}) == 3 and {e.user for e in chosen} < {
        e.user for e in valid_examples
    }
    assert (
        select(["u0"], limit=None)[0]
        and not valid_selection(
            data, [sequential("u0", C)], ["rating"], "all", None, [], test, None, 0
        )[0]
    )


def test_row_notes_list_only_the_weights_chosen_on_valid_examples():
    # A sequential-only run has no valid candidate examples: its candidate weight is the
    # model-alone default, not a choice, and the notes must not present it as chosen.
    from recsysllm.evaluation.report import _row_notes

    def facts(candidate_grid):
        return {
            "fusion": {
                "score": "fused",
                "all_items": "guided",
                "weights": {"all_items": 0.7, "candidates": 0.0},
                "valid_ndcg": {"all_items": {"0": 0.05, "0.7": 0.09}, "candidates": candidate_grid},
                "metric": "NDCG@10",
                "chosen_on": {"examples": 943, "users": 943},
            }
        }

    (line,) = [
        n for n in _row_notes(facts("no valid examples of this variant: 0")) if "fusion" in n
    ]
    assert line.endswith("by NDCG@10: all items 0.7.")
    (line,) = [n for n in _row_notes(facts({"0": 0.3, "0.5": 0.2})) if "fusion" in n]
    assert line.endswith("by NDCG@10: all items 0.7, candidates 0.")
