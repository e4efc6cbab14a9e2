"""``recsysllm evaluate`` / ``scripts/evaluate.py``: evaluate a checkpoint, write reports.

    python scripts/evaluate.py --config configs/tiny_ml100k.yaml --checkpoint runs/tiny/final \\
        --split test --prompts all --out runs/tiny/eval/results.json

Reads top to bottom: load the checkpoint -> rebuild the data from the config (the
same split as training; a catalog whose hash differs from the checkpoint's is
refused) -> build the examples -> evaluate the model and the baselines on them ->
write results.json, results.md and results.png next to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from recsysllm import pipeline
from recsysllm.checkpoint_meta import check_compatible
from recsysllm.config import load_config
from recsysllm.evaluation.baselines import evaluate_baselines, training_statistics
from recsysllm.evaluation.evaluator import evaluate
from recsysllm.evaluation.report import write_reports
from recsysllm.schema import TASK_FAMILIES, Example


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsysllm evaluate",
        description="Evaluate a checkpoint per task family x template (seen / unseen), with baselines.",
    )
    parser.add_argument(
        "--config", required=True, help="the training YAML (rebuilds the same data split)"
    )
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint directory (adapter or full weights)"
    )
    parser.add_argument(
        "--base-model",
        default=None,
        help="base model directory (default: recorded in the checkpoint)",
    )
    parser.add_argument(
        "--split", choices=("valid", "test"), default=None, help="default: eval.split of the config"
    )
    parser.add_argument(
        "--prompts", choices=("seen", "unseen", "all"), default=None, help="default: eval.prompts"
    )
    parser.add_argument(
        "--families", nargs="+", choices=TASK_FAMILIES, default=None, help="default: eval.families"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="evaluate the first N users (sorted ids) only; default: eval.limit",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: eval.batch_size")
    parser.add_argument("--num-beams", type=int, default=None, help="default: eval.num_beams")
    parser.add_argument(
        "--exclude-history", action="store_true", help="also rank items without the user's history"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=64, help="generation budget for text answers"
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda if available, else cpu)"
    )
    parser.add_argument(
        "--out", required=True, help="path of results.json (.md and .png are written next to it)"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides key=value (as for training)")
    return parser


def limit_users(examples: Sequence[Example], limit: int | None) -> list[Example]:
    """The examples of the first ``limit`` users in sorted id order (all for None).

    Selecting users rather than examples keeps the same users under every template,
    so per-template numbers compare like with like.
    """
    if limit is None:
        return list(examples)
    if limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    kept = set(sorted({e.user for e in examples})[:limit])
    return [e for e in examples if e.user in kept]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = load_config(args.config, args.overrides)
    eval_args = config.eval
    split = args.split or eval_args.split
    prompt_set_name = args.prompts or eval_args.prompts
    families = args.families or list(eval_args.families)
    batch_size = args.batch_size or eval_args.batch_size
    num_beams = args.num_beams or eval_args.num_beams
    ks = tuple(eval_args.top_k)
    exclude_history = args.exclude_history or eval_args.exclude_history

    model, tokenizer, catalog, prompts, meta, _ = pipeline.load_checkpoint_for_inference(
        args.checkpoint, base_model=args.base_model, device=args.device
    )
    data = pipeline.prepare_data(config.data, seed=config.data.seed, prompts=prompts)
    # The examples must name the items the adapter was trained on.
    check_compatible(meta, catalog_hash=data.catalog.hash, where=args.checkpoint)
    examples = data.tasks.examples(split, families, prompts=prompt_set_name, seed=config.data.seed)
    examples = limit_users(examples, args.limit if args.limit is not None else eval_args.limit)
    if not examples:
        print(f"recsysllm evaluate: no {split} examples for families {families}", file=sys.stderr)
        return 1

    results = evaluate(
        model,
        tokenizer,
        catalog,
        examples,
        families=families,
        batch_size=batch_size,
        num_beams=num_beams,
        ks=ks,
        max_length=config.data.max_length,
        max_new_tokens=args.max_new_tokens,
        exclude_history=exclude_history,
        seed=config.data.seed,
        prompts=prompts,
    )
    item_counts, user_ratings = training_statistics(data.splits, split)
    has_ratings = any(ratings for ratings in user_ratings.values())
    baselines = evaluate_baselines(
        examples,
        items=catalog.item_keys,
        item_counts=item_counts,
        user_ratings=user_ratings if has_ratings else None,
        ks=ks,
        seed=config.data.seed,
        exclude_history=exclude_history,
    )
    metadata = {
        "checkpoint": str(args.checkpoint),
        "base_model": meta.base_model,
        "split": split,
        "prompts": prompt_set_name,
        "families": families,
        "limit_users": args.limit,
        "num_examples": len(examples),
        "num_beams": num_beams,
        "catalog_hash": catalog.hash,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "seed": config.data.seed,
        # 1-of-(N+1) direct lists; N < data.num_negatives on a small catalog.
        "direct_negatives": data.splits.num_negatives,
        "data_notes": dict(data.splits.tables.notes),
        "config": config.to_dict(),
    }
    paths = write_reports(results, baselines, metadata, args.out)
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"wrote {paths['json']}, {paths['markdown']}, {paths['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
