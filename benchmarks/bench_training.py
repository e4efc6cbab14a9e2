"""Training throughput: tokens/s (and on GPU MFU and peak memory) of the GLM + collator.

    python benchmarks/bench_training.py                    # CPU: tiny demo model, packed vs unpacked
    python benchmarks/bench_training.py --device cuda      # GPU: LoRA on glm-large / glm-2b shapes
    python benchmarks/bench_training.py --device cuda --shapes glm-2b --packing window \
        --loss labelled --attention flex --out runs.jsonl  # one configuration of the levers
    python benchmarks/bench_training.py --table runs.jsonl # the results as a Markdown table

Levers (issue 13), each a flag; with none of them given, the run is today's path:

- ``--packing window``: rows planned across batches (``recsysllm.packing``, all the
  step's examples as one window; ``--rows`` rows per step) instead of packing within
  each batch of ``--batch`` examples (``batch``) or not at all (``off``).
- ``--loss labelled``: the head and loss on labelled positions only
  (``return_logits=False``; Liger-Kernel's fused linear cross-entropy on CUDA when
  installed) instead of full logits.
- ``--attention flex``: FlexAttention with a block mask from the collator's key
  intervals instead of SDPA on the dense mask. On CPU (no FlexAttention backward in
  torch) a flex run times forward passes only and says so (``forward_only``).
- ``--checkpoint-every k``: activation checkpointing of blocks 0, k, 2k, ... (1: all);
  ``--checkpointing`` is ``--checkpoint-every 1``.
- ``--compile-blocks``: ``torch.compile`` each transformer block.

A plain torch loop (AdamW, one optimizer step per batch) over synthetic TokenizedExamples
collated by the real :class:`BlankInfillingCollator`: only torch, transformers and peft are
imported (no deepspeed, datasets, pygtrie or wandb), so it runs on a bare GPU box.

Figures:

- tokens/s counts real (non-padding) tokens, Part A + Part B, per second of wall time
  (collation included: it is part of the input pipeline a run pays for).
- MFU = model FLOPs per second / peak FLOPs (``--peak-tflops``, default 989 = H100/H200
  dense bf16). Model FLOPs per optimizer step, with N the parameter count of the linear
  layers and embeddings used per token, T the real tokens, and per row of width L:
  * full fine-tuning: 6 N T (forward 2NT, backward 4NT);
  * LoRA: 4 N T for the frozen weights (forward 2NT + activation gradients 2NT; no weight
    gradients) + 6 N_lora T for the adapters;
  * attention scores and weighted values: 4 L^2 h per layer and row forward, twice that
    backward (12 L^2 h per layer and row in all), over the padded width L because the
    explicit mask makes SDPA compute every cell (``mfu``, the convention of the figures
    in RESULTS.md). ``mfu_visible`` counts 12 h per layer only for the cells a query may
    attend to (what FlexAttention computes, up to its tiles), so it is the stricter of
    the two whenever rows hold several examples.
  Activation-checkpointing recomputation is NOT counted (the usual MFU convention), so
  checkpointing lowers MFU by the time it costs.
- peak memory: ``torch.cuda.max_memory_allocated`` over the timed steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from recsysllm.collator import BlankInfillingCollator
from recsysllm.modeling import GLMConfig, GLMForConditionalGeneration
from recsysllm.modeling.glm.tokenization import GPT2_SPECIAL_IDS
from recsysllm.modeling.modeling_glm import TRAINING_PAD_MULTIPLE
from recsysllm.packing import pack_rows
from recsysllm.schema import Example, Segment, TokenizedExample

# GLM special ids laid out as in the GPT-2 BPE checkpoints (GLM_REFERENCE.md).
SPECIALS = SimpleNamespace(
    **{f"{name}_token_id": token_id for name, token_id in GPT2_SPECIAL_IDS.items()}
)
SHAPES = {
    # name: (layers, hidden, heads, vocab)
    "tiny": (2, 128, 4, 2048),
    "glm-large": (24, 1024, 16, 50304),
    "glm-2b": (36, 2048, 32, 50304),
    "glm-10b": (48, 4096, 64, 50304),
}


def synthetic_examples(
    count: int, min_len: int, max_len: int, vocab: int, seed: int
) -> list[TokenizedExample]:
    """Task-like examples: plain runs and 3-8 token entities, half with an entity answer."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(count):
        length = int(rng.integers(min_len, max_len + 1))
        ids = rng.integers(10, min(vocab, 50000), size=length).tolist()
        units, unit, position = [], 0, 0
        while position < length:
            plain = int(rng.integers(2, 10))
            units += [-1] * min(plain, length - position)
            position += plain
            if position < length:
                size = min(int(rng.integers(3, 9)), length - position)
                units += [unit] * size
                unit, position = unit + 1, position + size
        units = units[:length]
        sentences = [p // 40 for p in range(length)]
        if i % 2 and unit > 0:
            # Answer = the last entity occurrence, hidden by [MASK].
            last = max(u for u in units if u >= 0)
            start, end = units.index(last), len(units) - units[::-1].index(last)
            example = Example((Segment("x"),), task="sequential", answer_mask=None)
            examples.append(TokenizedExample(ids, units, sentences, (start, end), "mask", example))
        else:
            examples.append(
                TokenizedExample(ids, units, sentences, None, None, Example((), task="pretrain"))
            )
    return examples


@dataclass
class Result:
    shape: str
    device: str
    lora: bool
    packing: str
    loss: str
    attention: str
    checkpoint_every: int
    compile_blocks: bool
    forward_only: bool
    examples_per_step: float
    max_length: int
    tokens_per_s: float
    tokens_per_cpu_s: float  # process CPU time: the robust figure on a shared CPU machine
    rows_per_batch: float
    non_pad_fraction: float
    mfu: float | None
    mfu_visible: float | None
    peak_memory_gib: float | None


def linear_params(model: torch.nn.Module) -> tuple[int, int]:
    """(frozen-or-trained base parameters used per token, LoRA parameters)."""
    base = lora = 0
    for name, p in model.named_parameters():
        if "lora_" in name:
            lora += p.numel()
        elif "position_embeddings" not in name:  # lookups, no FLOPs
            base += p.numel()
    return base, lora


def step_batches(
    args: argparse.Namespace, collator: BlankInfillingCollator, vocab: int, packing: str
) -> list[list[list[TokenizedExample]]]:
    """Per step, its rows of examples (``window``) or one list of its examples (else)."""
    steps = args.warmup + args.steps
    if packing != "window":
        examples = synthetic_examples(args.batch * steps, args.min_len, args.max_len, vocab, seed=1)
        return [[examples[i * args.batch : (i + 1) * args.batch]] for i in range(steps)]
    # Enough examples for the rows (the first rows are the fullest: keep them all).
    mean = (args.min_len + args.max_len) / 2 + 6
    count = int(1.3 * args.rows * steps * args.max_length / mean) + args.rows
    examples = synthetic_examples(count, args.min_len, args.max_len, vocab, seed=1)
    rows = pack_rows([collator.encode(e).length for e in examples], args.max_length)
    if len(rows) < args.rows * steps:
        raise RuntimeError(f"{len(rows)} rows planned, {args.rows * steps} needed")
    order = np.random.default_rng(0).permutation(len(rows))[: args.rows * steps]
    planned = [[examples[i] for i in rows[r]] for r in order.tolist()]
    return [planned[i * args.rows : (i + 1) * args.rows] for i in range(steps)]


def visible_cells(batch: dict[str, torch.Tensor]) -> int:
    """Query-key pairs that may attend, over the batch (dense mask or key intervals)."""
    if "attention_intervals" in batch:
        intervals = batch["attention_intervals"]
        return int((intervals[:, 1] - intervals[:, 0]).clamp(min=0).sum())
    return int(batch["attention_mask"].sum())


def run(args: argparse.Namespace, shape: str, lora: bool) -> Result:
    packing, checkpoint_every = args.packing, args.checkpoint_every
    layers, hidden, heads, vocab = SHAPES[shape]
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = GLMConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        max_sequence_length=args.max_length,
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
        attention_implementation=args.attention,
    )
    forward_only = args.attention == "flex" and device.type == "cpu"
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the training dtype: no fp32 copy of 10B weights
    try:
        with device:
            model = GLMForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default_dtype)
    if lora:
        from peft import LoraConfig, get_peft_model

        targets = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
        # As DeepSpeed bf16 trains (configs/ds/*.json): every parameter in bf16, adapters
        # included. peft keeps adapters in fp32 otherwise, and then casts every LoRA
        # input activation to fp32 and back (a quarter of the GPU time at glm-large width).
        model.to(dtype)
    if checkpoint_every:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False},
            every_n_layers=checkpoint_every,
        )
    if args.compile_blocks:
        for block in (
            model.get_base_model().glm.transformer.layers if lora else model.glm.transformer.layers
        ):
            block.compile(dynamic=False)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    specials = (
        SPECIALS
        if vocab > 50264
        else SimpleNamespace(**{k: v % vocab for k, v in vars(SPECIALS).items()})
    )
    collator = BlankInfillingCollator(
        specials,
        max_length=args.max_length,
        packing=packing == "batch",
        seed=0,
        pad_to_multiple_of=args.max_length if args.pad_to_max_length else TRAINING_PAD_MULTIPLE,
        attention_layout="intervals" if args.attention == "flex" else "mask",
    )
    batches = step_batches(args, collator, vocab, packing)
    base_params, lora_params = linear_params(model)
    flops = visible_flops = tokens = rows = examples = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    profiler = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            if args.profile:
                profiler = torch.profiler.profile()
                profiler.__enter__()
            start, cpu_start = time.perf_counter(), time.process_time()
            flops = visible_flops = tokens = rows = examples = 0
        parts = batches[step]
        batch = collator.collate_rows(parts) if packing == "window" else collator(parts[0])
        cells = visible_cells(batch)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if forward_only:
            with torch.no_grad():
                model(**batch, return_logits=args.loss == "full")
        else:
            loss = model(**batch, return_logits=args.loss == "full").loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        n_rows, width = batch["input_ids"].shape
        real = int(sum(length for _, _, length in collator.last_placement))
        tokens += real
        rows += n_rows
        examples += len(collator.last_placement)
        per_token = (4 * base_params + 6 * lora_params) if lora else 6 * base_params
        flops += per_token * real + 12 * layers * hidden * width * width * n_rows
        visible_flops += per_token * real + 12 * layers * hidden * cells
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    cpu_elapsed = time.process_time() - cpu_start
    if profiler is not None:
        profiler.__exit__(None, None, None)
        sort_by = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(profiler.key_averages().table(sort_by=sort_by, row_limit=25), flush=True)
    on_gpu = device.type == "cuda"
    peak = args.peak_tflops * 1e12
    return Result(
        shape=shape,
        device=str(device),
        lora=lora,
        packing=packing,
        loss=args.loss,
        attention=args.attention,
        checkpoint_every=checkpoint_every,
        compile_blocks=args.compile_blocks,
        forward_only=forward_only,
        examples_per_step=examples / args.steps,
        max_length=args.max_length,
        tokens_per_s=tokens / elapsed,
        tokens_per_cpu_s=tokens / cpu_elapsed,
        rows_per_batch=rows / args.steps,
        non_pad_fraction=collator.non_pad_fraction.cumulative,
        mfu=flops / elapsed / peak if on_gpu else None,
        mfu_visible=visible_flops / elapsed / peak if on_gpu else None,
        peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
    )


def table(path: str) -> str:
    """The JSON lines of ``--out`` runs as one Markdown table."""
    lines = [
        "| shape | packing | loss | attention | ckpt every | compile | rows | examples "
        "| non-pad | tokens/s | tokens/CPU s | MFU | MFU (visible cells) | peak GiB |",
        "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with open(path) as handle:
        for line in handle:
            r = json.loads(line)
            if "error" in r:
                lines.append(
                    f"| {r['shape']} | {r['packing']} | {r['loss']} | {r['attention']} "
                    f"| {r['checkpoint_every'] or 'off'} | | | | | {r['error']} | | | | |"
                )
                continue
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
            visible = f"{r['mfu_visible']:.1%}" if r["mfu_visible"] is not None else "-"
            memory = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
            attention = r["attention"] + (" (forward only)" if r["forward_only"] else "")
            lines.append(
                f"| {r['shape']} | {r['packing']} | {r['loss']} | {attention} "
                f"| {r['checkpoint_every'] or 'off'} | {'on' if r['compile_blocks'] else 'off'} "
                f"| {r['rows_per_batch']:.2f} | {r['examples_per_step']:.1f} "
                f"| {r['non_pad_fraction']:.1%} | {r['tokens_per_s']:,.0f} "
                f"| {r['tokens_per_cpu_s']:,.0f} | {mfu} | {visible} "
                f"| {memory} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument(
        "--shapes", nargs="*", default=None, help="default: tiny on CPU; glm-large glm-2b on GPU"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="examples per step (default 16 CPU, 32 GPU)"
    )
    parser.add_argument("--max-length", type=int, default=None, help="default 256 CPU, 1024 GPU")
    parser.add_argument(
        "--min-len", type=int, default=40, help="shortest synthetic example (tokens)"
    )
    parser.add_argument(
        "--max-len", type=int, default=None, help="longest synthetic example (default max_length/2)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps (default 10 CPU, 20 GPU)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="accelerator peak dense bf16 TFLOP/s"
    )
    parser.add_argument(
        "--out", default=None, help="also append the results as JSON lines to this file"
    )
    parser.add_argument(
        "--pad-to-max-length",
        action="store_true",
        help="pad every row to max_length (default: a multiple of 64, as training does)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print torch.profiler's top operators of the timed steps",
    )
    parser.add_argument(
        "--packing",
        nargs="*",
        choices=["off", "batch", "window"],
        default=None,
        help="one run per value (default: off batch on CPU, batch on GPU)",
    )
    parser.add_argument(
        "--rows", type=int, default=8, help="rows per step with --packing window (default 8)"
    )
    parser.add_argument(
        "--loss",
        nargs="*",
        choices=["full", "labelled"],
        default=["full"],
        help="one run per value",
    )
    parser.add_argument(
        "--attention",
        nargs="*",
        choices=["sdpa", "flex"],
        default=["sdpa"],
        help="one run per value",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        nargs="*",
        default=None,
        help="one run per value; 0 = no activation checkpointing (default: 0 on CPU, 0 1 on GPU)",
    )
    parser.add_argument(
        "--checkpointing", action="store_true", help="the same as --checkpoint-every 1"
    )
    parser.add_argument("--compile-blocks", action="store_true", help="torch.compile each block")
    parser.add_argument(
        "--lora",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="LoRA r=8 (default: on GPU) or all parameters (default: on CPU)",
    )
    parser.add_argument("--table", default=None, help="print the JSON lines of FILE as a table")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.device.startswith("cuda")
    args.batch = args.batch or (32 if gpu else 16)
    args.max_length = args.max_length or (1024 if gpu else 256)
    args.max_len = args.max_len or args.max_length // 2
    args.steps = args.steps or (20 if gpu else 10)
    packings = args.packing or (["batch"] if gpu else ["off", "batch"])
    every = [1] if args.checkpointing else args.checkpoint_every
    every = every if every is not None else ([0, 1] if gpu else [0])
    shapes = args.shapes or (["glm-large", "glm-2b"] if gpu else ["tiny"])
    lora = gpu if args.lora is None else args.lora
    losses, attentions = args.loss, args.attention
    for shape, packing, loss, attention, checkpoint_every in itertools.product(
        shapes, packings, losses, attentions, every
    ):
        args.packing, args.loss, args.attention = packing, loss, attention
        args.checkpoint_every = checkpoint_every
        try:
            record = dataclasses.asdict(run(args, shape, lora))
        except torch.OutOfMemoryError:
            record = {"shape": shape, "error": "out of memory"}
            record |= {k: getattr(args, k) for k in ("packing", "loss", "attention")}
            record |= {"checkpoint_every": checkpoint_every}
        # The next run builds its model afresh: free this one's memory first.
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()
        print(json.dumps(record), flush=True)
        if args.out:
            with open(args.out, "a") as handle:
                handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
