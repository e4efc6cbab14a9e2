"""Item-name cap on a generated long-title catalog (issue 12): the collapse and what fixes it.

    OMP_NUM_THREADS=1 python benchmarks/bench_long_titles.py                  # none, 8, 16
    python benchmarks/bench_long_titles.py --caps none 12 --examples 3000 --limit 100
    python benchmarks/bench_long_titles.py --data ml100k --caps none 16 32    # MovieLens-100K

For each cap (``none`` = full titles; ``--disambiguation`` says how capped names that
coincide are told apart) it trains the tiny from-scratch GLM of
``configs/tiny_ml100k.yaml`` (its model and optimiser; sequential templates only, short
histories, ``--examples`` examples) with ``data.item_name_max_tokens`` set to the cap,
then runs ``recsysllm evaluate`` on the VALID split (sequential-1, a seeded sample of
``--limit`` users, the training history excluded; model, model+pmi with its alpha chosen
on the same valid users, SASRec, popularity) and prints one table row per system:
HR@10 / NDCG@10 ± standard error and the diversity of the top-10 lists computed from
``outcomes.jsonl`` on the ORIGINAL titles (so the numbers do not depend on the cap):
coverage@10, the share of slots of the most-recommended item, of the largest brand
(the data's ``brand`` column), and of the largest 3-word title-prefix group
(``recsysllm.evaluation.diversity``).

A cap shortens every example, so at equal ``--examples`` a capped run takes fewer
optimizer steps; scale ``--examples`` per cap to compare at equal steps (RESULTS.md).

The long-title catalog is :mod:`recsysllm.data.synthetic` (seed 0: 1,200 generated items,
1,500 users; after the 5-core 748 items and 1,462 users), written to
``<out-dir>/data`` on first use.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recsysllm.evaluation.diversity import largest_prefix_group_share  # noqa: E402

CATEGORY = "LongTitles"
SYSTEMS = ("model", "model+pmi", "SASRec", "popularity")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("long", "ml100k"), default="long")
    parser.add_argument("--caps", nargs="+", default=["none", "8", "16"])
    parser.add_argument(
        "--disambiguation",
        choices=("number", "words"),
        default="words",
        help="data.item_name_disambiguation of the capped runs (default: the library's)",
    )
    parser.add_argument("--examples", type=int, default=6000, help="training examples")
    parser.add_argument("--limit", type=int, default=200, help="valid users evaluated")
    parser.add_argument("--num-beams", type=int, default=20)
    parser.add_argument("--sasrec-max-seconds", type=float, default=90.0)
    parser.add_argument("--out-dir", default="/tmp/bench_long_titles")
    parser.add_argument("--ml100k-path", default=str(REPO / "data" / "ml-100k"))
    return parser.parse_args(argv)


def recipe(args, cap: str, out: Path) -> dict:
    """configs/tiny_ml100k.yaml adapted: sequential only, short histories, one cap."""
    raw = yaml.safe_load((REPO / "configs" / "tiny_ml100k.yaml").read_text())
    data = raw["data"]
    if args.data == "long":
        data.update(source="amazon", path=str(Path(args.out_dir) / "data"), category=CATEGORY)
    else:
        data.update(source="movielens-100k", path=args.ml100k_path)
    data.update(
        max_length=512,
        history_budget=5,
        mixture={"sequential": 1.0},
        train_templates=["sequential-1", "sequential-2", "sequential-3"],
        examples_per_epoch=args.examples,
        item_name_max_tokens=None if cap == "none" else int(cap),
        item_name_disambiguation=args.disambiguation,
    )
    raw["model"]["from_scratch"]["max_sequence_length"] = 512
    raw["train"].update(output_dir=str(out / "run"), save_steps=100_000, logging_steps=50)
    raw["eval"].update(sasrec_max_seconds=args.sasrec_max_seconds)
    return raw


def original_names(final: Path, tables) -> tuple[dict[str, str], dict[str, str]]:
    """Item key of the checkpoint -> original title, and -> brand (title's first word)."""
    from recsysllm.data.catalog import EntityCatalog

    catalog = EntityCatalog.load(final / "catalog.json")
    columns = tables.items.to_dict()
    title_of = dict(zip(columns["item"], columns["title"], strict=True))
    brands = columns.get("brand") or [t.split()[0] for t in columns["title"]]
    brand_of = dict(zip(columns["item"], brands, strict=True))
    keys = catalog.item_ids
    return {k: title_of[r] for k, r in keys.items()}, {k: brand_of[r] for k, r in keys.items()}


def diversity(lists: list[list[str]], titles: dict, brands: dict, catalog_size: int) -> dict:
    counts = Counter(item for ranked in lists for item in ranked)
    slots = sum(counts.values())
    brand_counts = Counter(brands[item] for ranked in lists for item in ranked)
    return {
        "coverage": len(counts) / catalog_size,
        "top item": max(counts.values()) / slots,
        "top brand": max(brand_counts.values()) / slots,
        "prefix group": largest_prefix_group_share([[titles[i] for i in r] for r in lists])[0],
    }


def run_cap(args, cap: str, tables) -> list[dict]:
    from recsysllm.checkpoint_meta import read_meta
    from recsysllm.config import config_from_dict
    from recsysllm.evaluation.cli import main as evaluate_main
    from recsysllm.training import train

    out = Path(args.out_dir) / f"{args.data}-cap-{cap}-{args.disambiguation}"
    config = config_from_dict(recipe(args, cap, out), where=f"bench recipe (cap {cap})")
    started = time.monotonic()
    final = train(config)
    train_s = time.monotonic() - started
    results = out / "eval" / "results.json"
    argv = [
        "--checkpoint", str(final), "--out", str(results), "--split", "valid",
        "--families", "sequential", "--templates", "sequential-1", "--limit", str(args.limit),
        "--num-beams", str(args.num_beams), "--pmi", "--sasrec", "--no-fusion",
        "--valid-limit", str(args.limit),
    ]  # fmt: skip
    started = time.monotonic()
    if evaluate_main(argv) != 0:
        raise SystemExit(f"evaluation of cap {cap} failed")
    eval_s = time.monotonic() - started
    document = json.loads(results.read_text())
    outcomes = [json.loads(line) for line in (results.parent / "outcomes.jsonl").open()]
    titles, brands = original_names(final, tables)
    tokenizer_lengths = _name_lengths(final)
    rows = []
    for system in SYSTEMS:
        block = document["model"] if system == "model" else document["baselines"].get(system)
        if block is None:
            continue
        row = next(
            r
            for r in block["aggregated"]
            if (r["family"], r["variant"], r["split"]) == ("sequential", "all_items", "all")
        )
        lists = [
            [item for item, _ in o["top"]]
            for o in outcomes
            if o["system"] == system and o["variant"] == "all_items"
        ]
        rows.append(
            {
                "cap": cap if cap == "none" else f"{cap} ({args.disambiguation})",
                "system": system,
                "users": row["users"],
                "HR@10": (row["metrics"]["HR@10"], row["stderr"]["HR@10"]),
                "NDCG@10": (row["metrics"]["NDCG@10"], row["stderr"]["NDCG@10"]),
                **diversity(lists, titles, brands, len(titles)),
                "alpha": document["rows"]["model+pmi"]["alphas"]["all_items"]
                if system == "model+pmi"
                else None,
                "names": tokenizer_lengths,
                "steps": read_meta(final).step,
                "train_s": train_s,
                "eval_s": eval_s,
            }
        )
    return rows


def _name_lengths(final: Path) -> str:
    """Median / max tokens per item name and how many names were numbered."""
    from recsysllm.data.catalog import EntityCatalog
    from recsysllm.tokenization import load_tokenizer

    tokenizer = load_tokenizer(final / "tokenizer", saved=True)
    keys = EntityCatalog.load(final / "catalog.json").item_keys
    lengths = [len(tokenizer.encode_entity(key)) for key in keys]
    numbered = sum(" #" in key for key in keys)
    return f"{statistics.median(lengths):g} / {max(lengths)} ({numbered} numbered)"


def markdown(rows: list[dict]) -> str:
    header = (
        "| cap | system | users | HR@10 | NDCG@10 | coverage@10 | top item | top brand "
        "| prefix group | name tokens med / max | steps | train s | eval s |"
    )
    lines = [header, "|" + "---|" * 13]
    for r in rows:
        alpha = f" (alpha {r['alpha']:g})" if r["alpha"] is not None else ""
        lines.append(
            f"| {r['cap']} | {r['system']}{alpha} | {r['users']} "
            f"| {r['HR@10'][0]:.4f} ± {r['HR@10'][1]:.4f} "
            f"| {r['NDCG@10'][0]:.4f} ± {r['NDCG@10'][1]:.4f} "
            f"| {r['coverage']:.3f} | {r['top item']:.3f} | {r['top brand']:.3f} "
            f"| {r['prefix group']:.3f} | {r['names']} | {r['steps']} "
            f"| {r['train_s']:.0f} | {r['eval_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from recsysllm.data.sources import load_dataset_by_name

    if args.data == "long":
        from recsysllm.data.synthetic import write_long_title_category

        data_dir = Path(args.out_dir) / "data"
        if not (data_dir / f"{CATEGORY}_5.json").is_file():
            write_long_title_category(data_dir, category=CATEGORY, seed=0)
        tables = load_dataset_by_name("amazon", str(data_dir), category=CATEGORY)
    else:
        tables = load_dataset_by_name("movielens-100k", args.ml100k_path)
    rows = []
    for cap in args.caps:
        rows += run_cap(args, cap, tables)
        print(markdown(rows), flush=True)
    print(f"\nmachine: {platform.machine()} CPU, {platform.python_version()}")
    (Path(args.out_dir) / f"{args.data}-table.md").write_text(markdown(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
