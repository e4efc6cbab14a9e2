"""Forward+backward time of recsysllm's GLM vs transformers' GPT-2 of the same shape.

Same process, same inputs, interleaved repetitions after warm-up; prints a markdown
table and the ratio ours / GPT-2 (target <= 1.1). Our model runs with its explicit
4-D bool mask (causal here), GPT-2 with its built-in causal SDPA attention.

    python benchmarks/bench_model.py                                  # CPU, fp32
    python benchmarks/bench_model.py --device cuda --dtype bf16 --seq 1024

(with recsysllm installed, e.g. `pip install -e .`, or `PYTHONPATH=.` from the repo root)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from recsysllm.modeling import GLMConfig, GLMForConditionalGeneration

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args(argv)


def build_models(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    glm_config = GLMConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_attention_heads=args.heads,
        max_sequence_length=args.seq,
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
        gelu_approximate="tanh",  # as GPT-2's gelu_new
    )
    gpt2_config = GPT2Config(
        vocab_size=args.vocab,
        n_positions=args.seq,
        n_embd=args.hidden,
        n_layer=args.layers,
        n_head=args.heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,  # GPT-2's 50256 lies outside a small vocab
        eos_token_id=None,
    )
    torch.manual_seed(0)
    models = {
        "recsysllm GLM": GLMForConditionalGeneration(glm_config),
        "transformers GPT-2": GPT2LMHeadModel._from_config(gpt2_config, attn_implementation="sdpa"),
    }
    return {
        name: model.to(device=args.device, dtype=DTYPES[args.dtype]).train()
        for name, model in models.items()
    }


def build_inputs(args: argparse.Namespace) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=generator)
    input_ids = input_ids.to(args.device)
    positions = torch.stack(
        [
            torch.arange(args.seq).expand(args.batch, args.seq),
            torch.zeros(args.batch, args.seq, dtype=torch.long),
        ],
        dim=1,
    ).to(args.device)  # [batch, 2, seq]
    causal = torch.ones(args.seq, args.seq, dtype=torch.bool, device=args.device).tril()
    mask = causal.expand(args.batch, 1, args.seq, args.seq)  # [batch, 1, seq, seq]
    return {
        "recsysllm GLM": {
            "input_ids": input_ids,
            "position_ids": positions,
            "attention_mask": mask,
            "labels": input_ids,
        },
        "transformers GPT-2": {"input_ids": input_ids, "labels": input_ids},
    }


def step(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: str) -> float:
    """Seconds for one forward + backward."""
    model.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    model(**batch).loss.backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    models, inputs = build_models(args), build_inputs(args)
    times: dict[str, list[float]] = {name: [] for name in models}
    for repetition in range(args.warmup + args.repeats):
        # Interleaved, so drifting load on a shared machine hits both models alike.
        for name, model in models.items():
            seconds = step(model, inputs[name], args.device)
            if repetition >= args.warmup:
                times[name].append(seconds)

    device_name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
    )
    print(
        f"Forward+backward, {args.device} ({device_name or 'cpu'}, {torch.get_num_threads()} "
        f"threads), {args.dtype}, batch {args.batch} x seq {args.seq}, {args.layers} layers, "
        f"hidden {args.hidden}, {args.heads} heads, vocab {args.vocab}; "
        f"{args.repeats} repetitions after {args.warmup} warm-up; torch {torch.__version__}\n"
    )
    print("| model | parameters | median ms | min ms | tokens/s (median) |")
    print("|---|---:|---:|---:|---:|")
    tokens = args.batch * args.seq
    for name, model in models.items():
        median = statistics.median(times[name])
        parameters = sum(p.numel() for p in model.parameters())
        print(
            f"| {name} | {parameters / 1e6:.2f}M | {median * 1e3:.1f} | "
            f"{min(times[name]) * 1e3:.1f} | {tokens / median:,.0f} |"
        )
    ratio = statistics.median(times["recsysllm GLM"]) / statistics.median(
        times["transformers GPT-2"]
    )
    print(f"\nratio ours / GPT-2 (median): {ratio:.3f} (target <= 1.1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
