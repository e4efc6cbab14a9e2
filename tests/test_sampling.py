"""Behaviour sampling: windows, quotas, quota flow, no-timestamp fallback, history budget."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recsysllm.data.sampling import (
    SamplingConfig,
    history_budget,
    sample_history,
    split_windows,
    window_quotas,
)

DAY = 86_400
T = 100 * DAY  # target time of the hand-built histories


def at_days(*days: float) -> list[int]:
    return [int(d * DAY) for d in days]


def test_quotas_round_and_always_sum_to_the_budget():
    config = SamplingConfig()
    assert window_quotas(10, config) == (6, 3, 1)
    assert window_quotas(20, config) == (12, 6, 2)
    assert window_quotas(5, config) == (3, 2, 0)  # 3.0, 1.5 -> 2, rest 0
    assert window_quotas(1, config) == (1, 0, 0)
    assert window_quotas(0, config) == (0, 0, 0)
    for budget in range(60):
        assert sum(window_quotas(budget, config)) == budget


def test_windows_by_age():
    # ages (days):      99  30  90  91  7   8   1
    timestamps = at_days(1, 70, 10, 9, 93, 92, 99)
    timestamps.sort()  # 1, 9, 10, 70, 92, 93, 99 -> ages 99, 91, 90, 30, 8, 7, 1
    short, medium, long = split_windows(timestamps, T, SamplingConfig())
    assert short == [5, 6]  # age 7 (bound included) and 1
    assert medium == [2, 3, 4]  # ages 90 (bound included), 30, 8
    assert long == [0, 1]  # ages 99, 91


def test_sample_takes_most_recent_first_inside_each_window():
    # index:              0  1  2   3   4   5   6   7   8   9   10  11  12
    timestamps = at_days(1, 2, 3, 20, 30, 40, 50, 94, 95, 96, 97, 98, 99)
    # N=10: quotas 6 short, 3 medium, 1 long.
    # short (ages <= 7): 7..12 -> all six; medium: 3..6 -> 6, 5, 4; long: 0..2 -> 2.
    assert sample_history(timestamps, T, 10) == [2, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    # N=5: quotas 3, 2, 0 -> short 12, 11, 10; medium 6, 5.
    assert sample_history(timestamps, T, 5) == [5, 6, 10, 11, 12]


def test_unused_quota_flows_short_to_medium_to_long():
    # One short event, four medium, three long. N=10: quotas 6, 3, 1.
    timestamps = at_days(1, 2, 3, 20, 30, 40, 50, 99)
    # short takes 1 (5 spare) -> medium quota 8 takes all 4 (4 spare) -> long quota 5 takes 3.
    assert sample_history(timestamps, T, 10) == list(range(8))
    # N=4: quotas 2, 1, 1 -> short 7 (1 spare) -> medium 2: 6, 5 -> long 1: 2.
    assert sample_history(timestamps, T, 4) == [2, 5, 6, 7]


def test_spare_long_quota_flows_back_to_medium_then_short():
    # Twenty short events, one medium, no long. N=10: quotas 6, 3, 1.
    timestamps = at_days(50, *[93 + i * 0.25 for i in range(20)])
    # short 6 most recent (15..20); medium takes its 1 (2 spare); long has none (3 spare),
    # which flows back: medium is empty, short gives its next 3 most recent (12, 13, 14).
    assert sample_history(timestamps, T, 10) == [0, 12, 13, 14, 15, 16, 17, 18, 19, 20]


def test_nothing_at_or_after_the_target_time():
    timestamps = at_days(90, 95, 100, 100, 101)
    assert sample_history(timestamps, T, 10) == [0, 1]
    assert sample_history(timestamps, T, 1) == [1]


def test_missing_timestamps_use_the_20_40_40_shares():
    timestamps = [-1] * 20
    # short = last 20% (16..19), medium = next 40% (8..15), long = the rest (0..7).
    assert split_windows(timestamps, -1, SamplingConfig()) == (
        list(range(16, 20)),
        list(range(8, 16)),
        list(range(8)),
    )
    # N=10: short takes its 4 (2 spare) -> medium 5: 15..11 -> long 1: 7.
    assert sample_history(timestamps, -1, 10) == [7, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    # A target without a timestamp also switches to shares.
    assert sample_history(at_days(1, 2, 3, 4, 5), -1, 2) == [3, 4]


def test_document_without_target_measures_age_from_the_latest_event():
    timestamps = at_days(0, 50, 95, 100)
    # reference = day 100: short = {2, 3}, medium = {1}, long = {0}; N=3 -> 2, 1, 0.
    assert sample_history(timestamps, None, 3) == [1, 2, 3]


def test_config_fields_change_the_windows():
    timestamps = at_days(1, 2, 3, 20, 30, 40, 50, 94, 95, 96, 97, 98, 99)
    wide = SamplingConfig(short_window_days=60, medium_window_days=98)
    # ages: 99 98 97 80 70 60 50 6 5 4 3 2 1
    # short: ages <= 60 -> 5..12; medium: ages <= 98 -> 1..4; long: 0.
    assert split_windows(timestamps, T, wide) == (list(range(5, 13)), [1, 2, 3, 4], [0])
    all_long = SamplingConfig(short_ratio=0.0, medium_ratio=0.0, long_ratio=1.0)
    # Long quota 3 (most recent long-term first: 2, 1, 0).
    assert sample_history(timestamps, T, 3, all_long) == [0, 1, 2]


def test_config_validation():
    with pytest.raises(ValueError, match="sum to 1"):
        SamplingConfig(short_ratio=0.5, medium_ratio=0.3, long_ratio=0.1)
    with pytest.raises(ValueError, match="short_window_days"):
        SamplingConfig(short_window_days=100, medium_window_days=90)
    with pytest.raises(ValueError, match="chronological"):
        sample_history([5, 3], 10, 2)


@given(
    gaps=st.lists(st.integers(min_value=0, max_value=40 * DAY), max_size=40),
    target_gap=st.integers(min_value=0, max_value=3 * DAY),
    budget=st.integers(min_value=0, max_value=30),
)
def test_sampling_properties(gaps, target_gap, budget):
    timestamps = []
    for gap in gaps:
        timestamps.append((timestamps[-1] if timestamps else 0) + gap)
    target = (timestamps[-1] if timestamps else 0) + target_gap
    chosen = sample_history(timestamps, target, budget)
    prior = [i for i, ts in enumerate(timestamps) if ts < target]
    assert chosen == sorted(set(chosen))  # chronological, no repeats
    assert set(chosen) <= set(prior)  # never at or after the target
    assert len(chosen) == min(budget, len(prior))  # the budget is filled when history allows


def test_history_budget_from_title_lengths():
    titles = ["a b", "c d", "e f", "g h", "i j k l m n o p q r"]
    # 90th percentile of [2, 2, 2, 2, 10] = 2 + 0.6 * 8 = 6.8 -> 7 tokens, +1 separator = 8.
    assert history_budget(100, titles, lambda t: len(t.split()), reserved_tokens=40) == 7
    # quantile 1.0: the longest title (10) + 1 -> 60 // 11 = 5.
    assert (
        history_budget(100, titles, lambda t: len(t.split()), reserved_tokens=40, quantile=1.0) == 5
    )
    with pytest.raises(ValueError, match="no room for one history item"):
        history_budget(45, titles, lambda t: len(t.split()), reserved_tokens=40)
