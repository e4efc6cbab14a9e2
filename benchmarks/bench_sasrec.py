"""SASRec and popularity on MovieLens-100K under the project's protocol.

Protocol (DESIGN.md section 8, the harness's splits): 5-core users and items,
leave-one-out by time with the splits' tie-break, the test target predicted from every
earlier event (train + valid), ranked over ALL catalog items with the user's history
excluded, every test user (943). SASRec is trained on the train events with early
stopping on the valid NDCG@10 (``recsysllm.evaluation.sasrec``); popularity counts
the train and valid events (``baselines.training_statistics(splits, "test")``).

    python benchmarks/bench_sasrec.py                      # RecBole's SASRec defaults, seed 0
    python benchmarks/bench_sasrec.py --seed 1 --threads 2
    python benchmarks/bench_sasrec.py max_epochs=30        # any SASRecConfig field as key=value

Prints one markdown table (metric +- standard error over users, diversity of the
top-10 lists) and the training log summary. Reference (RecBole 1.2.1, same protocol):
SASRec HR@10 .1866 / NDCG@10 .0919, popularity HR@10 .0488 / NDCG@10 .0248; target
here: SASRec HR@10 >= .17 within a few CPU minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import time

import torch

from recsysllm.data.fetch import fetch
from recsysllm.data.sources import load_movielens_100k
from recsysllm.data.splits import build_splits
from recsysllm.evaluation.baselines import PopularityRanker, training_statistics
from recsysllm.evaluation.diversity import diversity_metrics
from recsysllm.evaluation.metrics import rank_of
from recsysllm.evaluation.sasrec import SASRecConfig, fit, split_histories

KS = (1, 5, 10)


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n))."""
    n = len(values)
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def per_user_metrics(ranks: list[int | None]) -> dict[str, list[float]]:
    """Per user: HR@k indicators and NDCG@k gains (None: a miss)."""
    columns: dict[str, list[float]] = {}
    for k in KS:
        columns[f"HR@{k}"] = [float(r is not None and r <= k) for r in ranks]
    for k in KS[1:]:
        columns[f"NDCG@{k}"] = [
            1.0 / math.log2(r + 1) if r is not None and r <= k else 0.0 for r in ranks
        ]
    return columns


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    fields = {f.name: f for f in dataclasses.fields(SASRecConfig)}
    overrides: dict[str, object] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown SASRecConfig field {key!r}; known: {sorted(fields)}")
        kind = type(getattr(SASRecConfig(), key))
        overrides[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="SASRecConfig fields as key=value")
    parser.add_argument("--data", default="data/ml-100k", help="MovieLens-100K directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits and of SASRec")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = SASRecConfig(**parse_overrides(args.overrides))

    start = time.perf_counter()
    splits = build_splits(
        load_movielens_100k(fetch("movielens-100k", args.data)), k=5, seed=args.seed
    )
    data_seconds = time.perf_counter() - start
    test = split_histories(splits, "test")
    users = sorted(test)
    histories = [test[user][0] for user in users]
    targets = [test[user][1] for user in users]
    catalog = sorted(set(splits.item_keys.values()))

    start, start_cpu = time.perf_counter(), time.process_time()
    ranker = fit(splits, config, seed=args.seed)
    fit_seconds, fit_cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    start = time.perf_counter()
    sasrec_ranks = ranker.target_ranks(histories, targets, exclude_history=True)
    sasrec_lists = ranker.rank_all(histories, k=max(KS), exclude_history=True)
    score_seconds = time.perf_counter() - start

    counts, _ = training_statistics(splits, "test")
    popularity = PopularityRanker(counts, catalog)
    popular_lists = [popularity.rank_all(history) for history in histories]
    popularity_ranks = [
        rank_of(t, ranked) for t, ranked in zip(targets, popular_lists, strict=True)
    ]

    rows = {"SASRec": sasrec_ranks, "popularity": popularity_ranks}
    top_lists = {"SASRec": sasrec_lists, "popularity": [r[: max(KS)] for r in popular_lists]}
    per_user = {name: per_user_metrics(ranks) for name, ranks in rows.items()}
    names = list(per_user["SASRec"])
    print(
        f"MovieLens-100K 5-core: {len(splits.users)} users, {len(catalog)} items, "
        f"{len(users)} test users; full ranking, history excluded; seed {args.seed}"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    print(
        f"SASRec: {len(ranker.log)} epochs, best epoch {ranker.best_epoch} "
        f"(valid NDCG@10 {ranker.log[ranker.best_epoch - 1].valid_ndcg:.4f}); "
        f"fit {fit_seconds:.0f} s wall, {fit_cpu_seconds:.0f} CPU s "
        f"({fit_cpu_seconds / len(ranker.log):.1f} CPU s/epoch), "
        f"test scoring {score_seconds:.1f} s, data {data_seconds:.0f} s"
    )
    print()
    print(
        "| system | "
        + " | ".join(names)
        + " | coverage@10 | top item share | top 1% share | Gini |"
    )
    print("|---|" + "---:|" * (len(names) + 4))
    for name, columns in per_user.items():
        cells = []
        for metric in names:
            mean, se = mean_and_se(columns[metric])
            cells.append(f"{mean:.4f} ± {se:.4f}")
        diversity = diversity_metrics(top_lists[name], len(catalog))
        cells += [
            f"{diversity['coverage']:.3f}",
            f"{diversity['top item share']:.3f}",
            f"{diversity['top 1% share']:.3f}",
            f"{diversity['Gini']:.3f}",
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    difference = [
        a - b
        for a, b in zip(per_user["SASRec"]["HR@10"], per_user["popularity"]["HR@10"], strict=True)
    ]
    mean, se = mean_and_se(difference)
    print(f"\npaired HR@10 difference SASRec - popularity: {mean:.4f} ± {se:.4f}")


if __name__ == "__main__":
    main()
