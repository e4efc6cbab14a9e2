"""Evaluate a checkpoint on seen / unseen prompt templates, with baselines.

    # the whole test split, every family and template
    python scripts/evaluate.py --config configs/tiny_ml100k.yaml --checkpoint runs/tiny/final \
        --split test --prompts all --out runs/tiny/eval/results.json

    # a quick look: 50 users, sequential and direct only, unseen templates
    python scripts/evaluate.py --config configs/tiny_ml100k.yaml --checkpoint runs/tiny/final \
        --split valid --prompts unseen --families sequential direct --limit 50 \
        --batch-size 8 --num-beams 20 --exclude-history --out runs/tiny/eval/valid.json

Same as ``recsysllm evaluate ...``. Writes results.json, results.md and results.png
(named after --out) and prints the markdown table.
"""

import sys

from recsysllm.cli import run_command
from recsysllm.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(run_command("recsysllm evaluate", main, sys.argv[1:]))
