"""Collator throughput and padding on MovieLens-style examples, one CPU core.

    python benchmarks/bench_collator.py            # full run (~1 min)
    python benchmarks/bench_collator.py --quick    # fewer batches

Synthetic but realistic examples: a user profile with 4 attribute entities (1-3
tokens each), a history of 20-60 item titles (3-8 tokens each) separated by one
plain token, prompt text, and for task examples a [MASK]ed item answer; pretraining
documents are the same behaviour text without an answer, split into sentences.
Examples run from ~110 to ~560 tokens. Reports examples/s of ``collator(batch)``
(batches of 32, tensors included) and the non-pad fraction, with and without
packing, at max length 512 and 1024.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np
import torch

from recsysllm.collator import BlankInfillingCollator
from recsysllm.modeling.glm.tokenization import GPT2_SPECIAL_IDS
from recsysllm.schema import Example, Segment, TokenizedExample

SPECIAL = SimpleNamespace(
    **{f"{name}_token_id": token_id for name, token_id in GPT2_SPECIAL_IDS.items()}
)
BATCH = 32
REPEATS = 5


def movielens_example(rng: np.random.Generator, task: bool) -> TokenizedExample:
    """One synthetic example; ids are random GPT-2 ids, entities numbered in order."""
    ids: list[int] = []
    units: list[int] = []
    sentences: list[int] = []
    state = {"entity": 0, "sentence": 0}

    def plain(count: int) -> None:
        ids.extend(rng.integers(100, 50000, size=count).tolist())
        units.extend([-1] * count)
        sentences.extend([state["sentence"]] * count)

    def entity(count: int) -> tuple[int, int]:
        start = len(ids)
        ids.extend(rng.integers(100, 50000, size=count).tolist())
        units.extend([state["entity"]] * count)
        sentences.extend([state["sentence"]] * count)
        state["entity"] += 1
        return start, len(ids)

    plain(4)  # "The user is"
    for _ in range(4):  # age, gender, occupation, zip code
        entity(int(rng.integers(1, 4)))
        plain(2)
    state["sentence"] += 1
    plain(8)  # "and watched these movies in order:"
    for position in range(int(rng.integers(20, 61))):
        entity(int(rng.integers(3, 9)))
        plain(1)  # ","
        if position % 10 == 9:
            state["sentence"] += 1
    state["sentence"] += 1
    if not task:
        example = Example(segments=(Segment("doc"),), task="pretrain")
        return TokenizedExample(ids, units, sentences, example=example)
    plain(9)  # "Which movie will the user watch next? Answer:"
    answer = entity(int(rng.integers(3, 9)))
    plain(1)  # "."
    example = Example(
        segments=(Segment("a", answer=True),),
        task="sequential",
        template_id="2-1",
        answer_mask="mask",
    )
    return TokenizedExample(
        ids, units, sentences, answer_span=answer, answer_mask="mask", example=example
    )


def measure(
    examples: list[TokenizedExample], max_length: int, packing: bool
) -> tuple[float, float, float]:
    """(examples per CPU second, per wall second, cumulative non-pad fraction).

    CPU time of this (single-threaded) process is the per-core figure; wall time is
    also shown because on a shared machine it includes waiting for a core.
    """
    best_cpu = best_wall = float("inf")
    for _ in range(REPEATS):  # best of several: the least disturbed by other processes
        collator = BlankInfillingCollator(SPECIAL, max_length=max_length, packing=packing, seed=0)
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(0, len(examples) - BATCH + 1, BATCH):
            collator(examples[i : i + BATCH])
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    done = (len(examples) // BATCH) * BATCH
    return done / best_cpu, done / best_wall, collator.non_pad_fraction.cumulative


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 batches per setting instead of 40")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    count = BATCH * (10 if args.quick else 40)
    sets = {
        "task": [movielens_example(rng, task=True) for _ in range(count)],
        "pretrain": [movielens_example(rng, task=False) for _ in range(count)],
    }
    lengths = [len(e.input_ids) for e in sets["task"] + sets["pretrain"]]
    print(
        f"example lengths: min {min(lengths)}, mean {np.mean(lengths):.0f}, max {max(lengths)} tokens"
    )
    print(
        "| examples | max_length | packing | examples / CPU s | examples / wall s | non-pad fraction |"
    )
    print("|---|---:|---|---:|---:|---:|")
    for name, examples in sets.items():
        for max_length in (512, 1024):
            for packing in (False, True):
                cpu_rate, wall_rate, fraction = measure(examples, max_length, packing)
                print(
                    f"| {name} | {max_length} | {packing} | {cpu_rate:,.0f} | {wall_rate:,.0f} | {fraction:.1%} |"
                )


if __name__ == "__main__":
    main()
