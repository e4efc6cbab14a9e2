"""Train a RecSysLLM model from a YAML recipe.

    python scripts/train.py --config configs/tiny_ml100k.yaml output_dir=runs/tiny max_steps=200
    deepspeed scripts/train.py --config configs/glm10b_lora.yaml
    torchrun --nproc_per_node 8 scripts/train.py --config configs/glm2b_lora.yaml
    python scripts/train.py --config configs/tiny_ml100k.yaml train.resume=latest

Overrides are ``key=value`` (dotted: ``train.learning_rate=1e-4``; shorthands
``output_dir=DIR`` and ``max_steps=N``). The work lives in :mod:`recsysllm.training`.
"""

from __future__ import annotations

import sys

from recsysllm.cli import run_command
from recsysllm.training import main

if __name__ == "__main__":
    sys.exit(run_command("recsysllm train", main, sys.argv[1:]))
