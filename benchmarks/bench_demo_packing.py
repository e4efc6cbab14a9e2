"""Non-pad fraction of the training data path on the real demo mixture, at 256 and 1024.

    python benchmarks/bench_demo_packing.py            # from a fresh checkout
    python benchmarks/bench_demo_packing.py --examples 3200 --work-dir /tmp/packing

Runs on its own: fetches MovieLens-100K into ``--data-dir`` (``recsysllm.data.fetch``,
skipped when present) and trains the demo's sentencepiece tokenizer into
``--work-dir`` (reused when present), exactly as ``configs/tiny_ml100k.yaml`` would.

For each max length it builds the training data as ``training.build_trainer`` does
(``training.training_data``: the dataset the Trainer reads and its data collator)
and collates every micro-batch of ``train.per_device_batch_size`` items in order over the first ``--examples`` examples of
epoch 0. Three layouts: packing off, packing within each batch
(``data.packing_window=0``; batches of 16 examples) and packing across batches (the
default, ``data.packing_window`` examples planned together; batches of rows). The
non-pad fraction is the collator's: real tokens / (rows x padded width), widths
rounded up to 64 as in training.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from recsysllm.config import load_config
from recsysllm.data.fetch import fetch
from recsysllm.pipeline import build_tokenizer, cap_item_names, prepare_data, task_mixture
from recsysllm.training import training_data

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny_ml100k.yaml"
# (label, overrides): per_device_batch_size counts examples without the sampler, rows with it.
LAYOUTS = [
    ("off", ["data.packing=false", "train.per_device_batch_size=16"]),
    ("within each batch", ["data.packing_window=0", "train.per_device_batch_size=16"]),
    ("across batches", []),
    ("across batches, rows of 1024", ["data.packing_row_length=1024"]),
]


def measure(overrides: list[str], data, tokenizer) -> tuple[float, float, int, int]:
    """(non-pad fraction, examples per CPU second, batches, examples) of one layout."""
    config = load_config(CONFIG, overrides)
    started = time.process_time()
    dataset, collate = training_data(config, data, tokenizer, task_mixture(config.data))
    size = config.train.per_device_batch_size
    batches = examples = 0
    for start in range(0, len(dataset), size):
        batch = collate([dataset[i] for i in range(start, min(start + size, len(dataset)))])
        batches += 1
        examples += len(batch["batch_examples"])
    rate = examples / (time.process_time() - started)
    return collate.collator.non_pad_fraction.cumulative, rate, batches, examples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="data/ml-100k", help="MovieLens-100K directory")
    parser.add_argument(
        "--work-dir", default="runs/bench_demo_packing", help="where the tokenizer is trained"
    )
    parser.add_argument("--examples", type=int, default=3200, help="examples of epoch 0 to use")
    parser.add_argument("--lengths", type=int, nargs="*", default=[256, 1024])
    args = parser.parse_args()

    fetch("movielens-100k", args.data_dir)
    base = [f"data.path={args.data_dir}", f"output_dir={args.work_dir}"]
    config = load_config(CONFIG, base)
    data = prepare_data(config.data, seed=config.data.evaluation_seed)
    tokenizer = build_tokenizer(
        config.tokenizer,
        data,
        config.train.output_dir,
        base_model=config.model.base_model,
        mixture=task_mixture(config.data),
        seed=config.data.seed,
    )
    data = cap_item_names(data, config.data, tokenizer)  # as training names the items
    common = [*base, f"data.examples_per_epoch={args.examples}", "train.epochs=1"]
    print(f"{args.examples} examples of epoch 0 of {CONFIG.name}'s mixture")
    print("| max length | packing | batch | batches | non-pad tokens | examples / CPU s |")
    print("|---:|---|---|---:|---:|---:|")
    for max_length in args.lengths:
        for label, overrides in LAYOUTS:
            if "data.packing_row_length=1024" in overrides and max_length >= 1024:
                continue  # the same as "across batches"
            full = [*common, f"data.max_length={max_length}", *overrides]
            fraction, rate, batches, examples = measure(full, data, tokenizer)
            size = load_config(CONFIG, full).train.per_device_batch_size
            unit = "rows" if label.startswith("across batches") else "examples"
            assert examples == args.examples, (examples, args.examples)
            print(
                f"| {max_length} | {label} | {size} {unit} | {batches} | {fraction:.1%} "
                f"| {rate:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
