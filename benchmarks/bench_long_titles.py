"""Item-name cap on a generated long-title catalog (issue 12): the collapse and what fixes it.

    OMP_NUM_THREADS=1 python benchmarks/bench_long_titles.py                  # none, 8, 16
    python benchmarks/bench_long_titles.py --caps none 12 --examples 3000 --limit 100
    python benchmarks/bench_long_titles.py --data ml100k --caps none 16 32    # MovieLens-100K
    python benchmarks/bench_long_titles.py --summary OUT/long-cap-none-number \
        OUT/long-cap-16-words --plot ablation.png              # earlier runs: table + PNG

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

``--summary RUN_DIR ...`` trains and evaluates nothing: it rebuilds the rows of earlier
runs (each RUN_DIR one ``<out-dir>/{data}-cap-{cap}-{disambiguation}`` directory; cap and
disambiguation read from the checkpoint's config) from their files, prints the table
(train s / eval s as "-") and writes the ``--plot`` PNG: the model's valid HR@10 ± 1
standard error per run, with the first run's popularity and SASRec HR@10 as reference
lines (the same users in every run), and the share of top-10 slots of the largest brand.
With ``--data long`` each run's catalog is read from ``data/`` next to the RUN_DIR.

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
from recsysllm.files import atomic_write  # noqa: E402

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
    parser.add_argument(
        "--summary",
        nargs="+",
        metavar="RUN_DIR",
        help="no training: rebuild the rows of these earlier runs and plot them (--plot)",
    )
    parser.add_argument("--plot", metavar="OUT.png", help="the --summary PNG")
    args = parser.parse_args(argv)
    if (args.summary is None) != (args.plot is None):
        parser.error("--summary and --plot go together")
    return args


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


def cap_label(cap: str, disambiguation: str | None) -> str:
    """The table's cap column: "none", or the cap and how coinciding names are told apart."""
    return cap if cap == "none" else f"{cap} ({disambiguation})"


def run_cap(args, cap: str, tables) -> list[dict]:
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
    return run_rows(out, tables, cap_label(cap, args.disambiguation), train_s, eval_s)


def run_rows(
    run_dir: Path, tables, label_cap: str, train_s: float | None, eval_s: float | None
) -> list[dict]:
    """One table row per system of a trained and evaluated run, read from its files.

    Args:
        run_dir: the run's ``{data}-cap-{cap}-{disambiguation}`` directory (``run/final/``
            and ``eval/results.json`` + ``eval/outcomes.jsonl``).
        tables: the data's tables (original titles and brands of the catalog's items).
        label_cap: the row's cap column (:func:`cap_label`).
        train_s, eval_s: seconds training and evaluation took (None: not measured).
    """
    from recsysllm.checkpoint_meta import read_meta

    final = Path(run_dir) / "run" / "final"
    results = Path(run_dir) / "eval" / "results.json"
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
                "cap": label_cap,
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
            f"| {_seconds(r['train_s'])} | {_seconds(r['eval_s'])} |"
        )
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def run_setting(final: Path, data_name: str) -> tuple[str, str | None]:
    """(cap, disambiguation) a checkpoint was trained with: "none" or the cap as text.

    Raises:
        SystemExit: the checkpoint was trained on other data than ``data_name`` says.
    """
    from recsysllm.checkpoints import read_checkpoint_config

    data = read_checkpoint_config(final).data
    source = "amazon" if data_name == "long" else "movielens-100k"
    if data.source != source:
        raise SystemExit(f"{final}: trained on {data.source!r} data, not --data {data_name}")
    cap = data.item_name_max_tokens
    return ("none" if cap is None else str(cap)), data.item_name_disambiguation


def summary(args) -> list[tuple[str, list[dict]]]:
    """(plot label, rows) of each ``--summary`` run, rebuilt from its files, in order; the
    label is the cap and the disambiguation, e.g. "16 words", or "none"."""
    from recsysllm.data.sources import load_dataset_by_name

    tables_of: dict[Path, object] = {}  # one load per data directory
    runs = []
    for name in args.summary:
        run_dir = Path(name)
        final = run_dir / "run" / "final"
        if not (final / "recsysllm_meta.json").is_file():
            raise SystemExit(f"{run_dir}: no run/final/ checkpoint (not a bench run directory)")
        cap, disambiguation = run_setting(final, args.data)
        if args.data == "long":
            data_dir = run_dir.resolve().parent / "data"
            if not (data_dir / f"{CATEGORY}_5.json").is_file():
                raise SystemExit(f"{run_dir}: no generated catalog in {data_dir}")
        else:
            data_dir = Path(args.ml100k_path).resolve()
        if data_dir not in tables_of:
            tables_of[data_dir] = (
                load_dataset_by_name("amazon", str(data_dir), category=CATEGORY)
                if args.data == "long"
                else load_dataset_by_name("movielens-100k", str(data_dir))
            )
        rows = run_rows(run_dir, tables_of[data_dir], cap_label(cap, disambiguation), None, None)
        runs.append((cap if cap == "none" else f"{cap} {disambiguation}", rows))
    return runs


def plot_summary(runs: list[tuple[str, list[dict]]], path: str | Path) -> None:
    """PNG of ``--summary``: the model's HR@10 ± 1 standard error per run, with the first
    run's popularity and SASRec HR@10 as reference lines, and the top-brand share per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recsysllm.files import atomic_write

    def system_row(rows: list[dict], system: str) -> dict | None:
        return next((r for r in rows if r["system"] == system), None)

    models = [system_row(rows, "model") for _, rows in runs]
    labels = [
        f"{label}\n{model['steps']} steps" for (label, _), model in zip(runs, models, strict=True)
    ]
    positions = list(range(len(runs)))
    figure, (hr_axis, brand_axis) = plt.subplots(1, 2, figsize=(max(8, 2.4 * len(runs) + 3), 4.5))
    hr = [m["HR@10"][0] for m in models]
    hr_axis.bar(
        positions,
        hr,
        yerr=[m["HR@10"][1] for m in models],
        capsize=4,
        color="tab:blue",
        label="model",
    )
    for x, value in zip(positions, hr, strict=True):
        hr_axis.annotate(f"{value:.3f}", (x, value), xytext=(6, 2), textcoords="offset points")
    first_label, first = runs[0]
    top = max(m["HR@10"][0] + m["HR@10"][1] for m in models)
    for system, style in (("popularity", ":"), ("SASRec", "--")):
        reference = system_row(first, system)
        if reference is not None:  # the same users in every run: the first run's
            value = reference["HR@10"][0]
            top = max(top, value)
            label = f"{system} ({value:.3f}, {first_label} run)"
            hr_axis.axhline(value, linestyle=style, color="gray", label=label)
    hr_axis.set_title(f"valid HR@10 ± 1 s.e. ({models[0]['users']} users)", fontsize=10)
    hr_axis.set_ylim(0, 1.25 * top)  # headroom for the legend above the bars and lines
    hr_axis.legend(fontsize="small", loc="upper left", ncol=3)
    brand = [m["top brand"] for m in models]
    brand_axis.bar(positions, brand, color="tab:orange")
    for x, value in zip(positions, brand, strict=True):
        brand_axis.annotate(
            f"{value:.3f}", (x, value), xytext=(0, 2), textcoords="offset points", ha="center"
        )
    brand_axis.set_title("share of top-10 slots of the largest brand (model)", fontsize=10)
    brand_axis.set_ylim(bottom=0)
    for axis in (hr_axis, brand_axis):
        axis.set_xticks(positions, labels, fontsize=8)
        axis.set_xlabel("item-name cap")
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.summary:
        runs = summary(args)
        print(markdown([row for _, rows in runs for row in rows]), flush=True)
        plot_summary(runs, args.plot)
        print(f"\nplot: {args.plot}")
        return 0
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
    atomic_write(Path(args.out_dir) / f"{args.data}-table.md", markdown(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
