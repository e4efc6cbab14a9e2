"""Zero-shot: a pretrained base model, untrained, ranking the 1 + 99 direct candidates.

    python benchmarks/bench_zero_shot.py                        # SmolLM2-135M, 100 test users
    python benchmarks/bench_zero_shot.py --limit 5 --threads 1  # measure throughput first
    python benchmarks/bench_zero_shot.py --only harness & python benchmarks/bench_zero_shot.py \
        --only plain; python benchmarks/bench_zero_shot.py --only summary  # two processes
    python benchmarks/bench_zero_shot.py model.torch_dtype=bfloat16 --eval-arg=--pmi

Shows the language prior: how far a model that never saw a recommendation example gets
by reading the user's history and the candidate titles. Two rows of the base model on
the same examples, beside popularity and random:

- ``model``: ``recsysllm evaluate --base-model DIR --config CONFIG`` (the harness's own
  blank-infilling layout and candidate scoring; the untrained decoder sees its unused
  special ids as [CLS]/[MASK]/[sop]/[eop], Part A bidirectionally, and every candidate
  token at the mask's rotary position);
- ``plain text`` / ``plain text+lennorm``: :mod:`recsysllm.evaluation.plain_text` (the
  text before the answer read causally, each title scored as its continuation; summed
  and per-token log-probability, from one pass), through ``evaluate_ranker`` on the
  very examples (the CLI's template selection and seeded user sample) and protocol.

The evaluated examples: CONFIG's data (test split), the direct templates given
(``--templates``), a seeded sample of ``--limit`` users (``recsysllm evaluate``'s
``--limit``: numpy ``default_rng(data.seed)``). Writes ``results.json`` (the harness
run), ``plain_text.json``, ``timings.json`` and ``summary.md`` into ``--out-dir`` and prints the table:
HR@1/5/10 and NDCG@10 ± standard error (users as clusters) per system for the seen
templates, the unseen ones and all.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from recsysllm.files import atomic_write

REPO = Path(__file__).resolve().parent.parent
METRICS = ("HR@1", "HR@5", "HR@10", "NDCG@10")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    parser.add_argument("--config", default=str(REPO / "configs" / "smollm2_lora.yaml"))
    parser.add_argument("--base-model", default=str(REPO / "data" / "models" / "smollm2-135m"))
    parser.add_argument("--templates", nargs="+", default=["direct-3", "direct-7"])
    parser.add_argument("--split", choices=("valid", "test"), default="test")
    parser.add_argument("--limit", type=int, default=100, help="seeded sample of N users")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out-dir", default="/tmp/bench_zero_shot")
    parser.add_argument(
        "--only",
        choices=("harness", "plain", "summary"),
        default=None,
        help="run one part (e.g. the two parts as two one-thread processes), or only "
        "summarise the parts already in --out-dir; default: both parts, then the summary",
    )
    parser.add_argument(
        "--eval-arg",
        action="append",
        default=[],
        help="passed to recsysllm evaluate as is (repeatable), e.g. --eval-arg=--pmi",
    )
    return parser.parse_args(argv)


def cell(row: dict | None, metric: str) -> str:
    if row is None:
        return "-"
    return f"{row['metrics'][metric]:.3f} ± {row['stderr'][metric]:.3f}"


def table(systems: dict[str, dict]) -> list[str]:
    """Markdown rows: one per (system, seen / unseen / all) of the candidates variant."""
    lines = [
        "| system | templates | n (users) | " + " | ".join(METRICS) + " |",
        "|---|---|---|" + "---:|" * len(METRICS),
    ]
    for name, summary in systems.items():
        for row in summary["aggregated"]:
            if row["variant"] != "candidates":
                continue
            label = f"{row['split']} ({', '.join(row['templates'])})"
            cells = [cell(row, m) for m in METRICS]
            lines.append(
                f"| {name} | {label} | {row['count']} ({row['users']}) | "
                + " | ".join(cells)
                + " |"
            )
    return lines


def plain_text_rows(args) -> dict:
    """The plain-text rows on the harness's examples: the same selection and seeded user
    sample (``recsysllm evaluate``'s own functions), the same protocol."""
    from recsysllm import pipeline
    from recsysllm.config import load_config
    from recsysllm.evaluation.cli import sample_users, select_templates
    from recsysllm.evaluation.evaluator import EvalProtocol, evaluate_ranker, history_items
    from recsysllm.evaluation.plain_text import PlainTextRanker, PlainTextScorer

    config = load_config(args.config, [*args.overrides, f"model.base_model={args.base_model}"])
    model, tokenizer = pipeline.load_base_model_for_inference(config.model, config.tokenizer)
    data = pipeline.prepare_data(config.data, seed=config.data.evaluation_seed)
    data = pipeline.cap_item_names(data, config.data, tokenizer)  # the harness row's names
    examples = data.tasks.examples(
        args.split, ["direct"], prompts="all", seed=config.data.evaluation_seed
    )
    known = [t.id for family in data.prompts.families for t in data.prompts.templates(family)]
    examples = select_templates(examples, args.templates, known)
    examples, user_sample = sample_users(examples, args.limit, config.data.evaluation_seed)
    protocol = EvalProtocol(
        ks=tuple(config.eval.top_k),
        exclude_history=config.eval.exclude_history,
        history=history_items(data.splits, args.split),
        seed=config.data.evaluation_seed,
        catalog_size=len(data.catalog.item_keys),
    )
    scorer = PlainTextScorer(model, tokenizer)
    rows = {
        name: evaluate_ranker(name, PlainTextRanker(scorer, norm), examples, protocol).to_dict()
        for name, norm in (("plain text", False), ("plain text+lennorm", True))
    }
    return {
        "rows": rows,
        "user_sample": user_sample,
        "num_examples": len(examples),
        "catalog_hash": data.catalog.hash,
        "torch_dtype": config.model.torch_dtype,
    }


def timed(part: str, out_dir: Path, threads: int, run) -> object:
    """Runs ``run()``, recording its wall and CPU seconds in ``out_dir/timings.json``."""
    started, cpu = time.monotonic(), time.process_time()
    result = run()
    path = out_dir / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings[part] = {
        "wall_s": round(time.monotonic() - started),
        "cpu_s": round(time.process_time() - cpu),
        "threads": threads,
    }
    atomic_write(path, json.dumps(timings, indent=2) + "\n")
    return result


def summary(out_dir: Path) -> list[str]:
    """The table of every part in ``out_dir`` (the plain-text rows only if they were
    computed on the harness run's users and catalog)."""
    import torch

    document = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    systems = {"model": document["model"]}
    plain_path = out_dir / "plain_text.json"
    if plain_path.exists():
        plain = json.loads(plain_path.read_text(encoding="utf-8"))
        if (
            plain["user_sample"]["users"] != document["user_sample"]["users"]
            or plain["num_examples"] != document["num_examples"]
            or plain["catalog_hash"] != document["catalog_hash"]
        ):
            raise ValueError(f"{plain_path}: other users, examples or catalog than results.json")
        systems |= plain["rows"]
    systems |= document["baselines"]
    lines = table(systems)
    lines.append("")
    lines.append(f"- users: {document['user_sample']['description']}")
    lines.append(f"- examples: {document['num_examples']} ({document['split']} split)")
    lines.append(f"- torch dtype: {document['config']['model']['torch_dtype']}")
    timings = out_dir / "timings.json"
    for part, t in (json.loads(timings.read_text()) if timings.exists() else {}).items():
        lines.append(
            f"- {part}: {t['wall_s']} s wall, {t['cpu_s']} s CPU ({t['threads']} thread(s))"
        )
    lines.append(f"- machine: {platform.machine()} CPU, torch {torch.__version__}")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from recsysllm.evaluation.cli import main as evaluate_main

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "harness"):
        eval_argv = [
            "--base-model", args.base_model, "--config", args.config,
            "--out", str(out_dir / "results.json"), "--split", args.split,
            "--families", "direct", "--templates", *args.templates, "--limit", str(args.limit),
            "--no-sasrec", *args.eval_arg, *args.overrides,
        ]  # fmt: skip
        status = timed("harness", out_dir, args.threads, lambda: evaluate_main(eval_argv))
        if status != 0:
            return status
    if args.only in (None, "plain"):
        plain = timed("plain text", out_dir, args.threads, lambda: plain_text_rows(args))
        atomic_write(out_dir / "plain_text.json", json.dumps(plain, indent=2) + "\n")
    if args.only in (None, "summary"):
        lines = summary(out_dir)
        atomic_write(out_dir / "summary.md", "\n".join(lines) + "\n")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
