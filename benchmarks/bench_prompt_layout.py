"""Does a prompt reveal its answer? Part A under answer swaps, on real MovieLens-100K.

    PYTHONPATH=$PWD python benchmarks/bench_prompt_layout.py --tokenizer runs/tiny/final/tokenizer

For a seeded sample of test users, every family's test examples are laid out by
``prompt_layout.build_prompt`` at each max_length; for every truncated prompt the
gold answer is replaced by other answers (5 random catalog items for item answers,
the other ratings / answer word otherwise) and the rendered Part A compared. Also
reported: prompts truncated per family, and templates refused because their
candidate lists cannot fit (they are never truncated). The issue that motivated
the layout measured, with the old answer-dependent truncation at max_length 1024,
Part A lengths changing for 87 of 116 truncated direct prompts.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from recsysllm.config import DataArgs
from recsysllm.modeling.glm.tokenization import GLMTokenizer
from recsysllm.pipeline import answer_budget, cap_item_names, prepare_data
from recsysllm.prompt_layout import PromptTooLongError, SpecialTokenIds, build_prompt
from recsysllm.schema import Segment


def swapped(example, text, entity):
    index = next(i for i, s in enumerate(example.segments) if s.answer)
    old = example.segments[index]
    if entity is None:
        text = old.text[: len(old.text) - len(old.text.lstrip())] + text
    segments = list(example.segments)
    segments[index] = Segment(text, entity=entity, answer=True)
    return dataclasses.replace(example, segments=tuple(segments))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="a saved GLMTokenizer directory")
    parser.add_argument("--data", default="data/ml-100k")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--max-lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--num-negatives", type=int, default=99)
    args = parser.parse_args()

    tokenizer = GLMTokenizer.from_pretrained(args.tokenizer)
    data_args = DataArgs(path=args.data, num_negatives=args.num_negatives)
    data = cap_item_names(prepare_data(data_args, seed=42), data_args, tokenizer)
    examples = data.tasks.examples("test", prompts="all", seed=42)
    users = sorted({e.user for e in examples})
    rng = np.random.default_rng(0)
    chosen = set(rng.choice(users, size=min(args.users, len(users)), replace=False).tolist())
    examples = [e for e in examples if e.user in chosen]
    special = SpecialTokenIds.from_tokenizer(tokenizer)
    budget = answer_budget(data_args, data.catalog, tokenizer)
    print(f"{len(examples)} test examples of {len(chosen)} users; answer budget {budget}")
    for max_length in args.max_lengths:
        truncated: dict[str, int] = {}
        total: dict[str, int] = {}
        refused: set[str] = set()
        swaps = changed = 0
        started = time.perf_counter()
        for example in examples:
            tokenized = tokenizer.tokenize_example(example)
            try:
                prompt = build_prompt(tokenized, special, budget, max_length)
            except PromptTooLongError:
                refused.add(example.template_id)
                continue
            total[example.task] = total.get(example.task, 0) + 1
            if not prompt.truncated:
                continue
            truncated[example.task] = truncated.get(example.task, 0) + 1
            if example.answer_type == "item":
                others = [(k, k) for k in rng.choice(data.catalog.item_keys, 5, replace=False)]
            elif example.answer_type == "rating":
                others = [(v, None) for v in ("1", "2", "3", "4", "5")]
            elif example.answer_type == "yesno":
                others = [(w, None) for w in ("yes", "no", "like", "dislike")]
            else:
                others = [("a much longer answer text " * 4, None)]
            for text, entity in others:
                other = build_prompt(
                    tokenizer.tokenize_example(swapped(example, text, entity)),
                    special,
                    budget,
                    max_length,
                )
                swaps += 1
                changed += (other.input_ids, other.intra) != (prompt.input_ids, prompt.intra)
        seconds = time.perf_counter() - started
        shares = ", ".join(f"{f} {truncated.get(f, 0)}/{n}" for f, n in sorted(total.items()))
        print(
            f"max_length {max_length}: truncated {shares}; refused templates "
            f"{sorted(refused) or 'none'}; answer swaps changing Part A: {changed} of {swaps}; "
            f"{seconds:.1f} s"
        )


if __name__ == "__main__":
    main()
