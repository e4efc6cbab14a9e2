"""Evaluate a checkpoint on seen / unseen prompt templates, with baselines.

    # the whole test split, every family and template, with the checkpoint's settings
    python scripts/evaluate.py --checkpoint runs/tiny/final --split test --prompts all \
        --out runs/tiny/eval/results.json

    # a quick look: a seeded sample of 50 users, two templates, valid split
    python scripts/evaluate.py --checkpoint runs/tiny/final --split valid \
        --templates sequential-1 direct-3 --limit 50 --batch-size 8 --num-beams 20 \
        --out runs/tiny/eval/valid.json

Same as ``recsysllm evaluate ...``. Writes results.json, outcomes.jsonl, results.md
and results.png (named after --out) and prints the markdown table.
"""

import sys

from recsysllm.cli import run_command
from recsysllm.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(run_command("recsysllm evaluate", main, sys.argv[1:]))
