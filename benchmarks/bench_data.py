"""Data pipeline benchmark at Amazon Beauty 5-core scale, end to end.

Synthesizes a data set the size of Amazon Beauty 5-core (2014 release: 22,363 users,
12,101 items, 198,502 reviews; reviews as gzipped JSON lines with realistic text
lengths, meta as gzipped Python-literal lines), then times each stage:

    load (sources.load_amazon_reviews) -> k-core + leave-one-out + direct candidates
    (splits.build_splits) -> entity catalog (catalog.EntityCatalog.from_tables) ->
    task examples (tasks.TaskBuilder: one training epoch of the default mixture, and the
    sequential test examples of the seen templates; ``--all-test-examples``: every family)

    python benchmarks/bench_data.py                          # Beauty size, files cached in data/bench-beauty
    python benchmarks/bench_data.py --extra-meta-items 247103  # meta as large as the real meta_Beauty (259,204 lines)

The synthetic files are written once per configuration and reused; only the pipeline
stages are timed. Target: end to end under 2 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import time
from pathlib import Path

import numpy as np

from recsysllm.data.catalog import EntityCatalog
from recsysllm.data.sources import load_amazon_reviews
from recsysllm.data.splits import build_splits
from recsysllm.data.tasks import TaskBuilder, TaskMixture
from recsysllm.files import atomic_write
from recsysllm.prompts import load_prompts

CATEGORY_PATHS = [
    ["Beauty", "Makeup", "Lips", "Lipstick"], ["Beauty", "Skin Care", "Face", "Creams & Moisturizers"],
    ["Beauty", "Hair Care", "Shampoos"], ["Beauty", "Fragrance", "Women's", "Eau de Parfum"],
    ["Beauty", "Tools & Accessories", "Nail Tools"], ["Beauty", "Makeup", "Eyes", "Mascara"],
]  # fmt: skip


def words(rng: np.random.Generator, vocabulary: np.ndarray, lengths: np.ndarray) -> list[str]:
    """One string per entry of ``lengths``, of that many Zipf-distributed words."""
    ranks = np.minimum(rng.zipf(1.3, size=int(lengths.sum())), len(vocabulary)) - 1
    tokens = vocabulary[ranks].tolist()
    out, start = [], 0
    for length in lengths.tolist():
        out.append(" ".join(tokens[start : start + length]))
        start += length
    return out


def synthesize(
    out_dir: Path, users: int, items: int, reviews: int, extra_meta_items: int, seed: int
) -> tuple[Path, Path]:
    """Write reviews_Beauty_5.json.gz and meta_Beauty.json.gz (skipped when present)."""
    reviews_path, meta_path = out_dir / "reviews_Beauty_5.json.gz", out_dir / "meta_Beauty.json.gz"
    if reviews_path.is_file() and meta_path.is_file():
        return reviews_path, meta_path
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    syllables = np.array(["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fi", "go"])
    vocabulary = np.array(
        ["".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(20_000)]
    )
    asins = [f"B{index:09d}" for index in range(items + extra_meta_items)]

    # 5-core by construction: every user and item gets >= 5 reviews, the rest by popularity.
    per_user = 5 + rng.multinomial(reviews - 5 * users, np.full(users, 1 / users))
    popularity = rng.pareto(1.2, size=items) + 1
    item_slots = np.concatenate(
        [
            np.repeat(np.arange(items), 5),
            rng.choice(items, size=reviews - 5 * items, p=popularity / popularity.sum()),
        ]
    )
    rng.shuffle(item_slots)
    text_lengths = np.clip(
        rng.lognormal(4.2, 0.9, size=reviews).astype(int), 3, 2000
    )  # mean ~100 words
    texts = words(rng, vocabulary, text_lengths)
    summaries = words(rng, vocabulary, rng.integers(1, 8, size=reviews))
    ratings = rng.choice([1.0, 2.0, 3.0, 4.0, 5.0], size=reviews, p=[0.05, 0.06, 0.11, 0.2, 0.58])

    def write_reviews(tmp: Path) -> None:
        row = 0
        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            for user, count in enumerate(per_user.tolist()):
                start = int(rng.integers(1_104_537_600, 1_400_000_000))
                times = start + np.cumsum(rng.integers(0, 60, size=count)) * 86_400
                for position in range(count):
                    record = {
                        "reviewerID": f"A{user:013d}", "asin": asins[item_slots[row]], "reviewerName": "J. Doe",
                        "helpful": [0, 0], "reviewText": texts[row], "overall": ratings[row],
                        "summary": summaries[row], "unixReviewTime": int(times[position]), "reviewTime": "01 1, 2014",
                    }  # fmt: skip
                    f.write(json.dumps(record) + "\n")
                    row += 1

    atomic_write(reviews_path, write_reviews)

    titles = words(rng, vocabulary, rng.integers(2, 12, size=len(asins)))
    descriptions = words(rng, vocabulary, rng.integers(10, 150, size=len(asins)))

    def write_meta(tmp: Path) -> None:
        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            for index, asin in enumerate(asins):
                record: dict = {"asin": asin, "description": descriptions[index]}
                if rng.random() > 0.02:  # a few items have no title, as in the real meta files
                    record["title"] = titles[index].title()
                record["imUrl"] = f"http://ecx.images-amazon.com/images/I/{asin}.jpg"
                related = rng.choice(asins[:items], size=40).tolist()
                record["related"] = {
                    "also_bought": related[:25],
                    "also_viewed": related[25:],
                    "bought_together": related[:2],
                }
                record["salesRank"] = {"Beauty": int(rng.integers(1, 300_000))}
                record["categories"] = [CATEGORY_PATHS[index % len(CATEGORY_PATHS)]]
                if rng.random() > 0.3:
                    record["brand"] = str(vocabulary[index % len(vocabulary)]).title()
                if rng.random() > 0.2:
                    record["price"] = round(float(rng.uniform(1, 80)), 2)
                f.write(repr(record) + "\n")  # the 2014 meta files are Python literals, not JSON

    atomic_write(meta_path, write_meta)
    return reviews_path, meta_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("data/bench-beauty"))
    parser.add_argument("--users", type=int, default=22_363)
    parser.add_argument("--items", type=int, default=12_101)
    parser.add_argument("--reviews", type=int, default=198_502)
    parser.add_argument(
        "--extra-meta-items", type=int, default=0, help="meta lines of items without reviews"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--all-test-examples", action="store_true", help="test examples of every family"
    )
    args = parser.parse_args()

    out_dir = (
        args.out_dir
        / f"u{args.users}-i{args.items}-r{args.reviews}-m{args.extra_meta_items}-s{args.seed}"
    )
    started = time.perf_counter()
    reviews_path, meta_path = synthesize(
        out_dir, args.users, args.items, args.reviews, args.extra_meta_items, args.seed
    )
    print(f"synthesize (not timed below): {time.perf_counter() - started:.1f} s; "
          f"reviews {reviews_path.stat().st_size / 1e6:.1f} MB gz, meta {meta_path.stat().st_size / 1e6:.1f} MB gz")  # fmt: skip

    # Wall and CPU time per stage: on a shared machine wall time also counts waiting for a core.
    timings: list[tuple[str, float, float]] = []

    def timed(stage: str, run):
        wall, cpu = time.perf_counter(), time.process_time()
        result = run()
        timings.append((stage, time.perf_counter() - wall, time.process_time() - cpu))
        return result

    tables = timed(
        "load (sources)", lambda: load_amazon_reviews(reviews_path, meta_path, category="Beauty")
    )
    splits = timed(
        "k-core + leave-one-out + candidates (splits)", lambda: build_splits(tables, k=5, seed=0)
    )
    catalog = timed("entity catalog (catalog)", lambda: EntityCatalog.from_tables(splits.tables))
    builder = timed("task builder (tasks)", lambda: TaskBuilder(splits, catalog, load_prompts()))
    train = timed(
        "train examples, 1 epoch (tasks)", lambda: builder.training_examples(TaskMixture(), 0, 0)
    )
    families = None if args.all_test_examples else ["sequential"]
    test = timed(
        f"test examples, {'all families' if families is None else 'sequential'}, seen (tasks)",
        lambda: builder.examples("test", families, seed=0),
    )

    print(f"loaded: {len(tables.interactions):,} interactions, {len(tables.items):,} items, "
          f"{len(tables.users):,} users; notes {tables.notes}")  # fmt: skip
    print(f"after 5-core: {len(splits.sequences):,} users, {len(catalog.item_keys):,} items; "
          f"{len(train):,} train examples per epoch, {len(test):,} test examples")  # fmt: skip
    print(f"{'stage':<48} {'wall':>8} {'cpu':>8}")
    for stage, wall, cpu in timings:
        print(f"{stage:<48} {wall:7.2f}s {cpu:7.2f}s")
    print(
        f"{'end to end':<48} {sum(t[1] for t in timings):7.2f}s {sum(t[2] for t in timings):7.2f}s"
    )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
