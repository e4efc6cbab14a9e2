"""Trie-constrained beam search: per-step overhead of the constraint, and users/s for top-10.

    python benchmarks/bench_generation.py                                   # CPU, tiny model
    python benchmarks/bench_generation.py --quick                           # fewer users
    python benchmarks/bench_generation.py --device cuda --dtype bf16 --shape glm-large

Synthetic catalog of 12,000 items whose titles are 3-12 tokens with Zipf-distributed
ids (so first tokens are shared by many items, as real titles share "The", "Star",
years, ...), GLM's GPT-2-style special ids, and prompts of ``--prompt-length``
tokens laid out as ``build_prompt`` does (``[CLS] ... [MASK] ... [eos]``). Random
weights: the ranking is meaningless, the cost is real.

Reports, for the same beams and prompts:
- seconds per decoding step (one model call after the prompt pass) of
  ``recommend_items`` (trie constraint, top-k distinct items) and of unconstrained
  beam search (``generate_ids(strategy="beam")``), and their ratio (target <= 1.15);
- users/s of ``recommend_items`` for top-k over the whole catalog.

Needs only torch, transformers, numpy and pygtrie (no deepspeed, datasets, wandb).
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np
import torch

from recsysllm.collator import PromptInputs
from recsysllm.generation import generate_ids, recommend_items
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
    "glm-large": (1024, 24, 16, 50304, 512),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class CountingModel(torch.nn.Module):
    """Counts model calls, so time can be divided per decoding step."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.config = model, model.config
        self.calls = 0

    def forward(self, **inputs):
        self.calls += 1
        return self.model(**inputs)


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
    model.calls = 0
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

    def constrained() -> None:
        for batch in batches:
            recommend_items(model, batch, trie, args.k, num_beams=num_beams, tokenizer=SPECIAL)

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

    constrained()  # warm-up (allocator, kernels)
    prompt_seconds, prompt_calls = timed(model, args.device, prompt_only)
    constrained_seconds, constrained_calls = timed(model, args.device, constrained)
    free_seconds, free_calls = timed(model, args.device, unconstrained)
    per_prompt_pass = prompt_seconds / prompt_calls
    constrained_step = (constrained_seconds - prompt_seconds) / (constrained_calls - prompt_calls)
    free_step = (free_seconds - prompt_seconds) / (free_calls - prompt_calls)
    print(f"prompt pass: {per_prompt_pass * 1e3:.1f} ms per batch")
    print(
        f"per step: constrained {constrained_step * 1e3:.2f} ms ({constrained_calls - prompt_calls} steps), "
        f"unconstrained {free_step * 1e3:.2f} ms ({free_calls - prompt_calls} steps); "
        f"ratio {constrained_step / free_step:.3f}x (target <= 1.15x)"
    )
    print(f"recommend_items top-{args.k}: {users / constrained_seconds:.1f} users/s")


if __name__ == "__main__":
    main()
