"""Cost of the base-model fingerprint (a strided sample of every tensor) and of weight checksums.

The fingerprint (``checkpoint_meta.tensors_fingerprint``) is taken on every load of a
base model, so it must stay cheap on glm-10b. Three measurements:

1. The glm-10b state dict shapes (taken from a model built on the meta device: names and
   shapes, no memory), each tensor allocated with ``torch.empty`` in bf16: 20 GB of
   address space of which only the sampled pages are touched. Every sampled value costs
   a page fault here, so this over-states a resident model.
2. One resident glm-10b block plus the embedding (written, so in RAM), the per-tensor
   time extrapolated to all of the model's tensors.
3. sha256 throughput of ``checkpoint_meta.file_sha256`` (written and verified once per
   checkpoint), extrapolated to a LoRA adapter and to full glm-10b weights.

    python benchmarks/bench_fingerprint.py            # median of --repeats runs each

(with recsysllm installed, e.g. `pip install -e .`, or `PYTHONPATH=.` from the repo root)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from recsysllm.checkpoint_meta import file_sha256, tensors_fingerprint
from recsysllm.modeling import GLMConfig, GLMForConditionalGeneration
from recsysllm.modeling.glm import _ARCHITECTURE_KEYS


def glm10b_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter name (without "glm.") -> shape of glm-10b (GLMConfig defaults), via meta."""
    with torch.device("meta"):
        model = GLMForConditionalGeneration(GLMConfig())
    return {
        name.removeprefix("glm."): tuple(p.shape)
        for name, p in model.named_parameters()
        if name.startswith("glm.")
    }


def timed(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hash-mib", type=int, default=512, help="file size for the sha256 rate")
    args = parser.parse_args(argv)
    arch = {key: getattr(GLMConfig(), key) for key in _ARCHITECTURE_KEYS}
    shapes = glm10b_shapes()
    numel = sum(torch.Size(s).numel() for s in shapes.values())
    print(f"glm-10b shapes: {len(shapes)} tensors, {numel / 1e9:.2f}B parameters")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")

    # 1. the whole state dict, untouched memory
    tensors = {name: torch.empty(shape, dtype=torch.bfloat16) for name, shape in shapes.items()}
    full = timed(lambda: tensors_fingerprint(arch, tensors), args.repeats)
    print(f"1. fingerprint, whole 10B state dict (untouched bf16 memory): {full:.3f} s")
    tensors.clear()

    # 2. resident block 0 + embeddings, extrapolated by tensor count
    resident_names = [n for n in shapes if ".layers." not in n or ".layers.0." in n]
    resident = {n: torch.full(shapes[n], 0.5, dtype=torch.bfloat16) for n in resident_names}
    part = timed(lambda: tensors_fingerprint(arch, resident), args.repeats)
    per_tensor = part / len(resident)
    print(
        f"2. fingerprint, {len(resident)} resident tensors: {part * 1e3:.1f} ms "
        f"({per_tensor * 1e6:.0f} us/tensor) -> {per_tensor * len(shapes):.3f} s for "
        f"{len(shapes)} tensors"
    )
    resident.clear()

    # 3. sha256 of a weight file
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.bin"
        path.write_bytes(os.urandom(args.hash_mib << 20))
        file_sha256(path)  # page cache warm
        seconds = timed(lambda: file_sha256(path), max(1, args.repeats // 2))
    rate = args.hash_mib / 1024 / seconds
    print(
        f"3. sha256: {rate:.2f} GiB/s -> glm-10b full bf16 weights (18.6 GiB) "
        f"{18.6 / rate:.0f} s; a LoRA r=8 adapter (~40 MiB) {40 / 1024 / rate * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()
