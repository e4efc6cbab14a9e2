"""Quality of one recipe: train it, evaluate it beside every baseline, append rows to RESULTS.md.

    python benchmarks/bench_quality.py configs/tiny_ml100k.yaml                 # the recipe as is
    python benchmarks/bench_quality.py configs/tiny_ml100k.yaml max_steps=40 --limit 100 \
        --eval-arg=--sasrec-max-seconds=60                                       # a short CPU look
    python benchmarks/bench_quality.py CONFIG --checkpoint runs/x/final          # evaluate only
    python benchmarks/bench_quality.py CONFIG --eval-arg=--pmi --eval-arg=--length-norm-row

Trains with ``recsysllm.training.train`` (the recipe plus ``key=value`` overrides), then
runs ``recsysllm evaluate`` on the final checkpoint (the checkpoint's own config; the
test split; ``--families``, sequential and direct by default; ``--limit`` users as a
seeded sample) with SASRec and fusion rows on by default, and appends one row per
ranking family to the table in ``--results`` (benchmarks/RESULTS.md): config, backbone,
optimizer steps, seed, users, the model's HR@1/5/10 and NDCG@5/10 and each baseline's
HR@10 / NDCG@10, all with standard errors (users as clusters), the model's coverage@10,
the fusion weight chosen on valid, SASRec's stopping reason (a capped SASRec is marked
"(lower bound)"), wall times and the machine. results.json, results.md and
outcomes.jsonl stay in ``--out-dir`` (default ``<train.output_dir>/quality``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TABLE_HEADING = "## Quality benchmark (`benchmarks/bench_quality.py`)"
TABLE_INTRO = """\
One row per (run, ranking family): the recipe trained with the given overrides and
evaluated on the test split by `recsysllm evaluate` (the checkpoint's own config, every
template of the family, a seeded sample of users; the user's training history excluded
from all-item rankings for every row). Metric ± standard error with users as clusters.
Baselines: SASRec (trained on the same splits, early stopping on valid; "(lower bound)"
when a time or epoch cap stopped it), fusion (LM + SASRec, weight chosen on the valid
split), popularity, random. Columns after the model: HR@10 / NDCG@10.
"""
COLUMNS = [
    "date", "config (overrides)", "backbone", "steps", "seed", "family (variant)", "n (users)",
    "HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "coverage@10", "SASRec", "fusion (w)",
    "popularity", "random", "train s", "eval s", "machine",
]  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="recipe YAML")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    parser.add_argument("--checkpoint", default=None, help="skip training: evaluate this one")
    parser.add_argument("--limit", type=int, default=None, help="users (default: eval.limit)")
    parser.add_argument("--families", nargs="+", default=["sequential", "direct"])
    parser.add_argument(
        "--templates", nargs="+", default=None, help="template ids (default: all of --families)"
    )
    parser.add_argument("--out-dir", default=None, help="default: <train.output_dir>/quality")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--no-append", action="store_true", help="print the rows only")
    parser.add_argument(
        "--eval-arg",
        action="append",
        default=[],
        help="passed to recsysllm evaluate as is (repeatable), e.g. --eval-arg=--pmi",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args(argv)


def backbone(config) -> str:
    if config.model.base_model:
        lora = f" + LoRA r={config.lora.r}" if config.lora.enabled else " (full)"
        return f"{Path(config.model.base_model).name}{lora}"
    shape = config.model.from_scratch
    return f"from scratch (hidden {shape.get('hidden_size')}, {shape.get('num_layers')} layers)"


def machine(use_cpu: bool) -> str:
    import torch

    if not use_cpu and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.machine()} CPU, {os.cpu_count()} cores (shared)"


def cell(row: dict | None, metric: str) -> str:
    if row is None or row["metrics"].get(metric) is None:
        return "-"
    return f"{row['metrics'][metric]:.4f} ± {row['stderr'][metric]:.4f}"


def pair(row: dict | None) -> str:
    if row is None:
        return "-"
    return f"{cell(row, 'HR@10')} / {cell(row, 'NDCG@10')}"


def table_rows(document: dict, facts: dict) -> list[list[str]]:
    """One table row per ranking (family, variant) of the results document."""
    systems = {"model": document["model"], **document["baselines"]}

    def find(name, family, variant):
        return next(
            (
                r
                for r in systems.get(name, {"aggregated": []})["aggregated"]
                if (r["family"], r["variant"], r["split"]) == (family, variant, "all")
            ),
            None,
        )

    rows_facts = document.get("rows", {})
    sasrec_note = ""
    if rows_facts.get("SASRec", {}).get("capped"):
        sasrec_note = " (lower bound)"
    weights = rows_facts.get("fusion", {}).get("weights", {})
    out = []
    for row in document["model"]["aggregated"]:
        if row["split"] != "all" or row["variant"] not in ("all_items", "candidates"):
            continue
        family, variant = row["family"], row["variant"]
        diversity = row.get("diversity", {})
        fusion = pair(find("fusion", family, variant))
        if variant in weights and fusion != "-":
            fusion += f" (w {weights[variant]:g})"
        sasrec = pair(find("SASRec", family, variant))
        out.append(
            [
                facts["date"], facts["config"], facts["backbone"], str(facts["steps"]),
                str(facts["seed"]), f"{family} ({variant})", f"{row['count']} ({row['users']})",
                cell(row, "HR@1"), cell(row, "HR@5"), cell(row, "HR@10"), cell(row, "NDCG@5"),
                cell(row, "NDCG@10"),
                f"{diversity['coverage']:.3f}" if "coverage" in diversity else "-",
                sasrec + (sasrec_note if sasrec != "-" else ""), fusion,
                pair(find("popularity", family, variant)), pair(find("random", family, variant)),
                facts["train_s"], facts["eval_s"], facts["machine"],
            ]
        )  # fmt: skip
    return out


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def append_rows(path: Path, rows: list[list[str]]) -> None:
    """Add the rows to the benchmark's table (the heading and header made when missing)."""
    from recsysllm.files import atomic_write

    text = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = [md_row(r) for r in rows]
    if TABLE_HEADING not in text:
        block = [TABLE_HEADING, "", TABLE_INTRO, md_row(COLUMNS), md_row(["---"] * len(COLUMNS))]
        text = text.rstrip("\n") + "\n\n" + "\n".join(block + lines) + "\n"
    else:
        # After the last line of this section's first table (the one under COLUMNS;
        # notes below it may hold tables of their own).
        start = text.index(TABLE_HEADING)
        section_lines = text[start:].split("\n")
        last = section_lines.index(md_row(COLUMNS))
        while last + 1 < len(section_lines) and section_lines[last + 1].startswith("|"):
            last += 1
        section_lines[last + 1 : last + 1] = lines
        text = text[:start] + "\n".join(section_lines)
    atomic_write(path, text)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from recsysllm.checkpoint_meta import read_meta
    from recsysllm.config import load_config
    from recsysllm.evaluation.cli import main as evaluate_main

    config = load_config(args.config, list(args.overrides))
    started = time.monotonic()
    if args.checkpoint is None:
        from recsysllm.training import train

        final = train(config)
        train_s = f"{time.monotonic() - started:.0f}"
    else:
        final, train_s = Path(args.checkpoint), "-"
    out_dir = Path(args.out_dir or Path(config.train.output_dir) / "quality")
    results = out_dir / "results.json"
    eval_argv = ["--checkpoint", str(final), "--out", str(results), "--split", "test"]
    eval_argv += ["--families", *args.families]
    if args.templates:
        eval_argv += ["--templates", *args.templates]
    if args.limit is not None:
        eval_argv += ["--limit", str(args.limit)]
    eval_argv += args.eval_arg
    started = time.monotonic()
    status = evaluate_main(eval_argv)
    eval_s = f"{time.monotonic() - started:.0f}"
    if status != 0:
        return status
    document = json.loads(results.read_text(encoding="utf-8"))
    overrides = f" ({' '.join(args.overrides)})" if args.overrides else ""
    facts = {
        "date": datetime.date.today().isoformat(),
        "config": f"{os.path.relpath(args.config, REPO)}{overrides}",
        "backbone": backbone(config),
        "steps": read_meta(final).step,
        "seed": config.train.seed,
        "train_s": train_s,
        "eval_s": eval_s,
        "machine": machine(config.train.use_cpu),
    }
    rows = table_rows(document, facts)
    print("\n".join(md_row(r) for r in [COLUMNS, *rows]))
    print(f"(full report: {results.with_suffix('.md')})")
    if not args.no_append:
        append_rows(Path(args.results), rows)
        print(f"appended {len(rows)} rows to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
