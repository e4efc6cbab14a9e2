"""SASRec baseline: causality, determinism, learning, history exclusion, early stopping."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from recsysllm.data.splits import build_splits
from recsysllm.evaluation import EvalProtocol, evaluate_ranker, history_items, metrics
from recsysllm.evaluation.sasrec import (
    SASRec,
    SASRecConfig,
    SASRecItemRanker,
    SASRecRanker,
    fit,
    fit_cached,
    ranks_of_targets,
    split_histories,
    splits_fingerprint,
    training_windows,
)
from recsysllm.schema import Example
from tests.conftest import rows_to_tables

NUM_ITEMS = 20
# Small and fast; the successor rule below is learnable in a few epochs.
FAST = SASRecConfig(
    hidden_size=32,
    inner_size=64,
    hidden_dropout=0.1,
    attention_dropout=0.1,
    max_length=10,
    learning_rate=1e-2,
    batch_size=16,
    max_epochs=40,
    patience=40,
)


def successor_splits(num_users: int = 60, length: int = 8):
    """Every user walks the item cycle: item i is always followed by item i+1 (mod NUM_ITEMS)."""
    rows = []
    for user in range(num_users):
        start = (user * 7) % NUM_ITEMS
        for step in range(length):
            rows.append((f"u{user}", f"x{(start + step) % NUM_ITEMS:02d}", 100 * step))
    item_ids = [f"x{i:02d}" for i in range(NUM_ITEMS)]
    tables = rows_to_tables(rows, {i: f"Title {i}" for i in item_ids}, name="successor")
    return build_splits(tables, k=1, seed=0, num_negatives=3)


@pytest.fixture(scope="module")
def splits():
    return successor_splits()


@pytest.fixture(scope="module")
def ranker(splits):
    return fit(splits, FAST, seed=0)


def test_training_windows_make_every_item_but_the_first_a_target_once():
    sequence = list(range(1, 124))
    windows = training_windows(sequence, max_length=50)
    assert all(2 <= len(w) <= 51 for w in windows)
    targets = sorted(t for w in windows for t in w[1:])
    assert targets == sequence[1:]
    # Each window's inputs are the items right before its targets.
    for window in windows:
        first = sequence.index(window[0])
        assert window == sequence[first : first + len(window)]
    assert training_windows([7], max_length=50) == []


def test_forward_shapes_and_log_softmax(splits, ranker):
    model = SASRec(NUM_ITEMS, FAST).eval()
    hidden = model(torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]]))
    assert hidden.shape == (2, 4, FAST.hidden_size)
    assert model.item_logits(hidden).shape == (2, 4, NUM_ITEMS)

    histories = [["Title x03", "Title x04"], ["Title x10"], []]
    scores = ranker.score_all(histories)
    assert scores.shape == (3, NUM_ITEMS)
    assert ranker.items == tuple(sorted(splits.item_keys.values()))
    torch.testing.assert_close(torch.logsumexp(scores, dim=-1), torch.zeros(3))
    with pytest.raises(ValueError, match="max_length"):
        model(torch.ones(1, FAST.max_length + 1, dtype=torch.long))


def test_a_later_item_cannot_change_an_earlier_output():
    torch.manual_seed(0)
    model = SASRec(NUM_ITEMS, FAST).eval()
    first = model(torch.tensor([[1, 2, 3, 4, 5]]))
    changed = model(torch.tensor([[1, 2, 3, 9, 17]]))
    torch.testing.assert_close(first[:, :3], changed[:, :3], rtol=0, atol=0)
    assert not torch.allclose(first[:, 3:], changed[:, 3:])
    # Right padding does not move a real position either.
    padded = model(torch.tensor([[1, 2, 3, 0, 0]]))
    torch.testing.assert_close(first[:, :3], padded[:, :3], rtol=0, atol=0)


def test_scoring_ignores_history_beyond_max_length(ranker):
    tail = [f"Title x{i:02d}" for i in range(FAST.max_length)]
    long = ["Title x19", "Title x18", *tail]
    torch.testing.assert_close(ranker.score_all([long]), ranker.score_all([tail]))


def test_fit_is_deterministic_per_seed(splits):
    config = SASRecConfig(**{**FAST.__dict__, "max_epochs": 3})
    histories = [["Title x03", "Title x04"], ["Title x10"]]
    state = torch.random.get_rng_state()
    first = fit(splits, config, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # caller's RNG untouched
    again = fit(splits, config, seed=5)
    other = fit(splits, config, seed=6)
    assert torch.equal(first.score_all(histories), again.score_all(histories))
    assert [r.loss for r in first.log] == [r.loss for r in again.log]
    assert not torch.equal(first.score_all(histories), other.score_all(histories))


def test_learns_a_predictable_successor(splits, ranker):
    test = split_histories(splits, "test")
    histories = [history for history, _ in test.values()]
    targets = [target for _, target in test.values()]
    # The target is always the successor of the last history item.
    assert all(
        int(t[-2:]) == (int(h[-1][-2:]) + 1) % NUM_ITEMS
        for h, t in zip(histories, targets, strict=True)
    )
    ranks = ranker.target_ranks(histories, targets)
    assert metrics.hit_rate_at_k(ranks, 1) >= 0.95
    # An unseen history is continued by the rule too.
    assert ranker.rank_all([["Title x05", "Title x06", "Title x07"]], k=1) == [["Title x08"]]


def test_history_exclusion(ranker):
    histories = [["Title x05", "Title x06", "Title x07"], ["Title x11"]]
    scores = ranker.score_all(histories)
    plain = ranker.rank_all(histories, k=NUM_ITEMS, exclude_history=False)
    excluded = ranker.rank_all(histories, k=NUM_ITEMS)
    for history, row, full, kept in zip(histories, scores, plain, excluded, strict=True):
        # Without exclusion: every item, by descending score.
        assert sorted(full) == list(ranker.items)
        assert [ranker.items[i] for i in torch.argsort(row, descending=True, stable=True)] == full
        # With it: the same order, history items removed.
        assert kept == [key for key in full if key not in history]

    targets = ["Title x09", "Title x12"]
    full_ranks = ranker.target_ranks(histories, targets, exclude_history=False)
    kept_ranks = ranker.target_ranks(histories, targets)
    for history, target, full_rank, kept_rank, full, kept in zip(
        histories, targets, full_ranks, kept_ranks, plain, excluded, strict=True
    ):
        assert kept_rank == kept.index(target) + 1
        ahead = sum(1 for key in history if full.index(key) < full.index(target))
        assert kept_rank == full_rank - ahead
    # A history item as target is not ranked once history is excluded.
    assert ranker.target_ranks([["Title x05"]], ["Title x05"]) == [None]


def test_ranks_are_pessimistic_on_ties():
    scores = torch.tensor([[0.5, 0.5, 0.1, 0.7], [0.0, -math.inf, 2.0, 1.0]])
    assert ranks_of_targets(scores, [0, 3]) == [3, 2]
    assert ranks_of_targets(scores, [2, 1]) == [4, None]


def test_candidate_ranks(ranker):
    history = ["Title x05", "Title x06", "Title x07"]
    row = ranker.score_all([history])[0]
    candidates = ["Title x08", "Title x01", "Title x15"]
    order = sorted(candidates, key=lambda key: -float(row[ranker.index[key]]))
    ranks = ranker.candidate_ranks([history] * 3, [candidates] * 3, candidates)
    assert ranks == [order.index(key) + 1 for key in candidates]
    assert ranks[0] == 1  # the successor


def test_early_stopping_keeps_the_best_valid_epoch(splits):
    # A large learning rate makes the valid metric move around, so the last epoch is
    # not the best and the restored weights must be the best epoch's.
    config = SASRecConfig(
        **{**FAST.__dict__, "learning_rate": 0.3, "max_epochs": 30, "patience": 3}
    )
    ranker = fit(splits, config, seed=0)
    scores = [record.valid_ndcg for record in ranker.log]
    best = max(scores)
    assert ranker.best_epoch == scores.index(best) + 1  # first epoch reaching the best
    assert len(ranker.log) == min(config.max_epochs, ranker.best_epoch + config.patience)
    valid = split_histories(splits, "valid")
    ranks = ranker.target_ranks([h for h, _ in valid.values()], [t for _, t in valid.values()])
    assert metrics.ndcg_at_k(ranks, 10) == pytest.approx(best, abs=1e-12)
    assert scores[-1] != best


def test_ranker_rejects_unknown_items(ranker):
    with pytest.raises(ValueError, match="not in the SASRec catalog"):
        ranker.score_all([["no such movie"]])
    with pytest.raises(ValueError, match="item keys"):
        SASRecRanker(SASRec(3, FAST), ["a", "b"], FAST)


def test_config_is_validated():
    with pytest.raises(ValueError, match="divisible"):
        SASRecConfig(hidden_size=10, num_heads=3)
    with pytest.raises(ValueError, match="hidden_dropout"):
        SASRecConfig(hidden_dropout=1.0)


def test_item_ranker_row_in_the_harness(splits, ranker):
    """Through evaluate_ranker: full histories from the splits, exclusion from the protocol."""
    test = split_histories(splits, "test")
    users = sorted(test)[:3]
    examples = [
        # A sequential example whose prompt shows a sampled history of one item.
        Example((), "sequential", "s-1", user=users[0], target=test[users[0]][1],
                answer_type="item", history=test[users[0]][0][-1:]),
        Example((), "rating", "r-1", user=users[1], target="4", answer_type="rating"),
        Example((), "direct", "d-1", user=users[2], target=test[users[2]][1], answer_type="item",
                candidates=("Title x00", test[users[2]][1], "Title x19")),
    ]  # fmt: skip
    row = SASRecItemRanker.for_split(ranker, splits, "test")
    history, target = test[users[0]]
    for exclude_history in (True, False):
        protocol = EvalProtocol(
            ks=(1, 5, 10), exclude_history=exclude_history, history=history_items(splits, "test")
        )
        results = evaluate_ranker("SASRec", row, examples, protocol)
        sequential, direct = sorted(results.outcomes, key=lambda o: o.family, reverse=True)
        assert sequential.family == "sequential" and direct.family == "direct"
        expected = ranker.target_ranks([history], [target], exclude_history=exclude_history)[0]
        assert sequential.rank == (expected if expected <= 10 else None)
        assert [key for key, _ in sequential.top] == ranker.rank_all(
            [history], k=10, exclude_history=exclude_history
        )[0]
        candidates = examples[2].candidates
        assert (
            direct.rank
            == ranker.candidate_ranks([test[users[2]][0]], [candidates], [examples[2].target])[0]
        )
    assert len(results.outcomes) == 2  # the rating example is not a ranking example
    with pytest.raises(ValueError, match="no SASRec history"):
        SASRecItemRanker(ranker, {}).score_candidates(examples[2:])


# --------------------------------------------------------------------------- weights cache


def test_weights_cache_is_reused_and_invalidated(splits, tmp_path, caplog):
    config = SASRecConfig(**{**FAST.__dict__, "max_epochs": 2})
    histories = [["Title x03", "Title x04"], ["Title x10"]]
    first, facts = fit_cached(splits, config, seed=3, cache_dir=tmp_path)
    assert facts["cache"] == "trained" and facts["epochs"] == 2
    assert facts["splits_fingerprint"] == splits_fingerprint(splits)
    entry = Path(facts["cache_entry"])
    record = json.loads(entry.read_text())
    assert record["seed"] == 3 and record["config"]["max_epochs"] == 2
    weights = entry.with_suffix(".safetensors")
    assert weights.exists() and record["weights"] == weights.name

    # Same splits, config and seed: the weights are read back, not retrained.
    again, facts_again = fit_cached(splits, config, seed=3, cache_dir=tmp_path)
    assert facts_again["cache"] == "reused" and facts_again["cache_entry"] == str(entry)
    assert torch.equal(again.score_all(histories), first.score_all(histories))
    assert [r.loss for r in again.log] == [r.loss for r in first.log]
    assert again.best_epoch == first.best_epoch and again.stopped == first.stopped

    # Another split (one user fewer), another seed or config: a new entry, trained.
    other_splits = successor_splits(num_users=59)
    assert splits_fingerprint(other_splits) != splits_fingerprint(splits)
    _, facts_other = fit_cached(other_splits, config, seed=3, cache_dir=tmp_path)
    assert facts_other["cache"] == "trained" and facts_other["cache_entry"] != str(entry)
    _, facts_seed = fit_cached(splits, config, seed=4, cache_dir=tmp_path)
    assert facts_seed["cache"] == "trained" and facts_seed["cache_entry"] != str(entry)
    capped = SASRecConfig(**{**config.__dict__, "max_epochs": 1})
    assert fit_cached(splits, capped, seed=3, cache_dir=tmp_path)[1]["cache"] == "trained"

    # Corrupt weights (or a JSON whose identity was edited): retrained and rewritten.
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    with caplog.at_level("WARNING"):
        _, facts_corrupt = fit_cached(splits, config, seed=3, cache_dir=tmp_path)
    assert facts_corrupt["cache"] == "trained" and "not as recorded" in caplog.text
    assert fit_cached(splits, config, seed=3, cache_dir=tmp_path)[1]["cache"] == "reused"
    record = json.loads(entry.read_text())
    record["splits_fingerprint"] = "0" * 64
    entry.write_text(json.dumps(record))
    assert fit_cached(splits, config, seed=3, cache_dir=tmp_path)[1]["cache"] == "trained"
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written left behind


def test_a_time_cap_stops_training_and_marks_a_lower_bound(splits):
    config = SASRecConfig(**{**FAST.__dict__, "max_epochs": 50, "max_seconds": 1e-6})
    ranker = fit(splits, config, seed=0)
    assert len(ranker.log) == 1 and ranker.stopped == "time cap" and ranker.capped
    uncapped = fit(splits, SASRecConfig(**{**FAST.__dict__, "max_epochs": 2}), seed=0)
    assert uncapped.stopped == "max_epochs" and uncapped.capped
    patient = SASRecConfig(**{**FAST.__dict__, "learning_rate": 0.3, "patience": 2})
    stopped = fit(splits, patient, seed=0)
    assert stopped.stopped == "early stopping" and not stopped.capped
    with pytest.raises(ValueError, match="max_seconds"):
        SASRecConfig(max_seconds=0)


def test_an_int_and_a_float_time_cap_share_one_cache_entry(tmp_path):
    """eval.sasrec_max_seconds: 120 from YAML (int) and --sasrec-max-seconds 120 (float)
    name the same weights, so the second evaluation reuses them."""
    from recsysllm.evaluation.sasrec import _cache_identity, cache_paths

    as_int, as_float = SASRecConfig(max_seconds=120), SASRecConfig(max_seconds=120.0)
    assert as_int == as_float
    paths = [cache_paths(tmp_path, _cache_identity("splits", c, 0)) for c in (as_int, as_float)]
    assert paths[0] == paths[1]
    assert paths[0] != cache_paths(tmp_path, _cache_identity("splits", SASRecConfig(), 0))
