"""Trie-constrained beam search: users/s for top-10, static vs reference decoder, same run.

    python benchmarks/bench_generation.py                                   # CPU, tiny model
    python benchmarks/bench_generation.py --quick                           # fewer users
    python benchmarks/bench_generation.py --shape small --users 32          # CPU, wider model
    python benchmarks/bench_generation.py --device cuda --dtype bf16 --shape glm-large \
        --users 256 --batch 64

Synthetic catalog of 12,000 items whose titles are 3-12 tokens with Zipf-distributed
ids (so first tokens are shared by many items, as real titles share "The", "Star",
years, ...), GLM's GPT-2-style special ids, and prompts of ``--prompt-length``
tokens laid out as ``build_prompt`` does (``[CLS] ... [MASK] ... [eos]``). Random
weights: the ranking is meaningless, the cost is real.

Reports, for the same beams and prompts:
- users/s of ``recommend_items`` for top-k over the whole catalog with each decoder
  (``decoder="reference"``: per-beam Python over the pygtrie trie; ``"static"``: the
  trie as tensors, the default), their ratio, for how many users both returned the
  same items in the same order, and the largest score difference;
- seconds per decoding step (one model call after the prompt pass) of each, and of
  unconstrained beam search (``generate_ids(strategy="beam")``) for scale.

Needs only torch, transformers, numpy and pygtrie (no deepspeed, datasets, wandb).
"""

from __future__ import annotations

import argparse
import functools
import time
from types import SimpleNamespace

import numpy as np
import torch

from recsysllm.collator import PromptInputs
from recsysllm.files import atomic_write
from recsysllm.generation import DECODERS, generate_ids, recommend_items, score_candidates
from recsysllm.modeling import GLMConfig, GLMForConditionalGeneration
from recsysllm.modeling.glm.tokenization import GPT2_SPECIAL_IDS
from recsysllm.trie import EntityTrie

# glm-10b's GPT-2 special ids (GLM_REFERENCE.md); rows 50265.. are padding.
SPECIAL = SimpleNamespace(
    **{f"{name}_token_id": token_id for name, token_id in GPT2_SPECIAL_IDS.items()},
    banned_generation_ids=(),
    vocab_size=50265,
)
CLS, EOS, MASK = SPECIAL.cls_token_id, SPECIAL.eos_token_id, SPECIAL.mask_token_id
SHAPES = {
    # hidden, layers, heads, vocab rows, max_sequence_length
    "tiny": (64, 2, 4, 50304, 512),
    "small": (256, 4, 4, 50304, 512),  # the glm-large vocabulary, a body a 2-core CPU runs
    "glm-large": (1024, 24, 16, 50304, 512),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class CountingModel(torch.nn.Module):
    """Counts model calls and their seconds (on CPU, where a call's time is its cost), so
    time can be divided per decoding step and into model and search."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.config = model, model.config
        self.calls, self.seconds = 0, 0.0

    def forward(self, **inputs):
        self.calls += 1
        start = time.perf_counter()
        output = self.model(**inputs)
        self.seconds += time.perf_counter() - start
        return output


def synthetic_catalog(rng: np.random.Generator, count: int) -> dict[str, tuple[int, ...]]:
    items: dict[tuple[int, ...], str] = {}
    while len(items) < count:
        length = int(rng.integers(3, 13))
        ids = tuple(int(i) for i in np.minimum(rng.zipf(1.3, size=length) + 100, 50000))
        items.setdefault(ids, f"item {len(items)}")
    return {key: ids for ids, key in items.items()}


def synthetic_prompt(rng: np.random.Generator, length: int) -> PromptInputs:
    body = rng.integers(100, 50000, size=length - 3).tolist()
    mask_position = length - 2  # "... the user will watch [MASK] [eos]"
    ids = [CLS, *body, MASK, EOS]
    return PromptInputs(ids, list(range(length)), [0] * length, mask_position, mask_position)


def timed(model: CountingModel, device: str, run) -> tuple[float, int]:
    """Seconds and model calls of ``run()``."""
    model.calls, model.seconds = 0, 0.0
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, model.calls


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    parser.add_argument("--items", type=int, default=12_000)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="users per recommend_items call")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--num-beams", type=int, default=None, help="default: k")
    parser.add_argument("--prompt-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--quick", action="store_true", help="16 users")
    parser.add_argument("--table-out", help="also write the table (header and row) here")
    parser.add_argument(
        "--candidates", type=int, default=100, help="1-of-N scoring: candidates per user"
    )
    parser.add_argument(
        "--decoders", nargs="+", default=list(DECODERS[::-1]), choices=DECODERS,
        help="recommend_items decoders to time (both: ratio and equality check)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    users = 16 if args.quick else args.users
    num_beams = args.num_beams or args.k

    rng = np.random.default_rng(0)
    start = time.perf_counter()
    items = synthetic_catalog(rng, args.items)
    trie = EntityTrie(items)
    build_seconds = time.perf_counter() - start
    lengths = [len(ids) for ids in items.values()]
    print(
        f"catalog: {len(items)} items, {np.mean(lengths):.1f} tokens/item (max {max(lengths)}), "
        f"{len(trie.allowed_next(()))} distinct first tokens; trie built in {build_seconds:.2f}s"
    )

    hidden, layers, heads, vocab, max_length = SHAPES[args.shape]
    torch.manual_seed(0)
    config = GLMConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        max_sequence_length=max_length,
    )
    model = CountingModel(
        GLMForConditionalGeneration(config).eval().to(args.device, DTYPES[args.dtype])
    )
    prompts = [synthetic_prompt(rng, args.prompt_length) for _ in range(users)]
    batches = [prompts[i : i + args.batch] for i in range(0, users, args.batch)]
    print(
        f"model: {args.shape} (hidden {hidden}, {layers} layers, vocab {vocab}), {args.device} {args.dtype}, "
        f"{torch.get_num_threads()} thread(s); {users} users, batches of {args.batch}, "
        f"prompt {args.prompt_length} tokens, k={args.k}, beams={num_beams}"
    )

    results: dict[str, list] = {d: [] for d in args.decoders}
    scores: dict[str, list] = {d: [] for d in args.decoders}

    keys = sorted(items)
    candidates = [
        [items[keys[i]] for i in rng.choice(len(keys), size=args.candidates, replace=False)]
        for _ in prompts
    ]

    def top_k(batch: slice, decoder: str) -> None:
        results[decoder] += recommend_items(
            model, prompts[batch], trie, args.k, num_beams=num_beams, tokenizer=SPECIAL,
            decoder=decoder,
        )  # fmt: skip

    def one_of_n(batch: slice, decoder: str) -> None:
        scores[decoder] += score_candidates(
            model, prompts[batch], candidates[batch], tokenizer=SPECIAL, decoder=decoder
        )

    def prompt_only() -> None:  # the prompt pass alone, to separate it from the steps
        for batch in batches:
            generate_ids(
                model, batch, SPECIAL, max_new_tokens=1, strategy="beam", num_beams=num_beams
            )

    steps = trie.max_length + 1

    def unconstrained() -> None:
        for batch in batches:
            generate_ids(
                model, batch, SPECIAL, max_new_tokens=steps, strategy="beam", num_beams=num_beams
            )

    start = time.perf_counter()
    trie.tensors(args.device)
    print(f"trie tensors built in {time.perf_counter() - start:.2f}s (once per catalog and device)")
    for decoder in args.decoders:  # warm-up (allocator, kernels)
        recommend_items(model, batches[0][:2], trie, args.k, tokenizer=SPECIAL, decoder=decoder)
    prompt_seconds, prompt_calls = timed(model, args.device, prompt_only)
    # The decoders take turns batch by batch, so both see the same machine load.
    seconds = dict.fromkeys(args.decoders, 0.0)
    model_seconds, calls = dict.fromkeys(args.decoders, 0.0), dict.fromkeys(args.decoders, 0)
    score_seconds = dict.fromkeys(args.decoders, 0.0)
    for start in range(0, users, args.batch):
        batch = slice(start, start + args.batch)
        for decoder in args.decoders:
            elapsed, count = timed(model, args.device, functools.partial(top_k, batch, decoder))
            seconds[decoder] += elapsed
            model_seconds[decoder] += model.seconds
            calls[decoder] += count
            run = functools.partial(one_of_n, batch, decoder)
            score_seconds[decoder] += timed(model, args.device, run)[0]
    per_step = {d: (seconds[d] - prompt_seconds) / (calls[d] - prompt_calls) for d in args.decoders}
    search = {d: (seconds[d] - model_seconds[d]) / (calls[d] - prompt_calls) for d in args.decoders}
    free_seconds, free_calls = timed(model, args.device, unconstrained)
    free_step = (free_seconds - prompt_seconds) / (free_calls - prompt_calls)
    print(f"prompt pass: {prompt_seconds / prompt_calls * 1e3:.1f} ms per batch")
    steps_text = ", ".join(f"{d} {per_step[d] * 1e3:.2f} ms" for d in args.decoders)
    print(f"per step: {steps_text}; unconstrained beams {free_step * 1e3:.2f} ms")
    if args.device == "cpu":  # on CUDA a call returns before its kernels ran
        search_text = ", ".join(f"{d} {search[d] * 1e3:.2f} ms" for d in args.decoders)
        print(f"per step outside the model (search bookkeeping): {search_text}")
    for decoder in args.decoders:
        print(f"recommend_items top-{args.k}, {decoder}: {users / seconds[decoder]:.1f} users/s")
    for decoder in args.decoders:
        print(
            f"score_candidates 1-of-{args.candidates}, {decoder}: "
            f"{users / score_seconds[decoder]:.1f} users/s"
        )
    if len(args.decoders) == 2:
        same_lists = sum(
            [key for key, _ in static] == [key for key, _ in reference]
            for static, reference in zip(results["static"], results["reference"], strict=True)
        )
        identical = f"{same_lists}/{users}"
        top_k_difference = max(
            abs(a - b)
            for static, reference in zip(results["static"], results["reference"], strict=True)
            for (_, a), (_, b) in zip(static, reference, strict=False)
        )
        ratio = seconds["reference"] / seconds["static"]
        score_ratio = score_seconds["reference"] / score_seconds["static"]
        difference = np.abs(np.array(scores["static"]) - np.array(scores["reference"])).max()
        print(
            f"top-{args.k} static / reference: {ratio:.2f}x users/s; users with the same items "
            f"in the same order: {identical}; largest score difference {top_k_difference:.1e}"
        )
        print(
            f"1-of-{args.candidates} static / reference: {score_ratio:.2f}x users/s; "
            f"largest score difference {difference:.1e}"
        )
        machine = f"CPU, {torch.get_num_threads()} thread(s)"
        if args.device == "cuda":
            machine = f"{torch.cuda.get_device_name()}, {args.dtype}"
        table = (
            "| machine | shape | users | per call | top-k users/s ref | static | ratio | same lists "
            "| 1-of-N users/s ref | static | ratio | largest difference |\n"
            "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|\n"
            f"| {machine} | {args.shape} | {users} | {args.batch} | "
            f"{users / seconds['reference']:.1f} | {users / seconds['static']:.1f} | "
            f"{ratio:.2f}x | {identical} | {users / score_seconds['reference']:.1f} | "
            f"{users / score_seconds['static']:.1f} | {score_ratio:.2f}x | {difference:.1e} |\n"
        )
        print(table, end="")
        if args.table_out:
            atomic_write(args.table_out, table)


if __name__ == "__main__":
    main()
