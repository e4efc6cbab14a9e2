"""What a checkpoint was trained on: ``recsysllm_meta.json``, written into every checkpoint.

An adapter is only meaningful on the base weights, tokenizer and entity catalog it was
trained with. The meta file records a fingerprint of each, and :func:`check_compatible`
refuses a mismatch with an error that says what differs, instead of silently producing
garbage recommendations.

Example:
    >>> meta = CheckpointMeta(base_model="/ckpt/base", base_model_fingerprint=model_fingerprint(model),
    ...                       tokenizer_fingerprint=tokenizer.fingerprint, lora=True, step=100)
    >>> write_meta("runs/x/checkpoint-100", meta)
    >>> check_compatible(read_meta("runs/x/checkpoint-100"),
    ...                  base_model_fingerprint=model_fingerprint(model), where="runs/x/checkpoint-100")
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from recsysllm.files import atomic_write

# 2: the fingerprint samples every tensor; weights_sha256 added.
FORMAT_VERSION = 2
META_FILENAME = "recsysllm_meta.json"

# Evenly spaced values hashed from EVERY tensor (all of a tensor with fewer elements).
_SAMPLES_PER_TENSOR = 512
# Weight files whose sha256 the meta records (top level of the checkpoint directory).
WEIGHT_FILE_SUFFIXES = (".safetensors",)
_HASH_CHUNK = 1 << 24


class CheckpointMismatchError(ValueError):
    """A checkpoint was trained on a different base model, tokenizer or catalog."""


class CorruptWeightsError(ValueError):
    """A weight file differs from the checksum recorded when it was written."""


@dataclass
class CheckpointMeta:
    """Provenance of one checkpoint.

    Attributes:
        base_model: path of the pretrained base checkpoint, or None for a from-scratch model.
        base_model_fingerprint: :func:`model_fingerprint` of the base weights before LoRA
            (for a from-scratch model: of its seeded initial weights).
        tokenizer_fingerprint: the tokenizer's ``fingerprint``.
        catalog_hash: ``EntityCatalog.hash`` of the items and attribute values trained on.
        prompts_hash: ``PromptSet.hash`` of the prompt templates trained on.
        lora: whether the checkpoint holds a LoRA adapter (else full weights).
        step: optimizer step at which it was written.
        added_token_ids: token ids whose embedding rows the tokenizer added (special
            roles without a reserved token); trained and stored with the weights.
        weights_sha256: weight file name -> sha256 hex of its bytes, filled by
            :func:`write_meta` from the files in the directory, checked by
            :func:`verify_weights` before loading.
        created: ISO-8601 UTC time of writing.
        format_version: version of this file's layout.
    """

    base_model: str | None
    base_model_fingerprint: str
    tokenizer_fingerprint: str
    catalog_hash: str | None = None
    prompts_hash: str | None = None
    lora: bool = True
    step: int = 0
    added_token_ids: list[int] = field(default_factory=list)
    weights_sha256: dict[str, str] = field(default_factory=dict)
    created: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat()
    )
    format_version: int = FORMAT_VERSION


def model_fingerprint(model: torch.nn.Module) -> str:
    """Cheap, deterministic sha256 of a model's architecture and base weights.

    Each backbone family defines what it hashes (``recsysllm.modeling.<family>.fingerprint``,
    built on :func:`tensors_fingerprint`): the architecture fields of the config, the
    name and shape of the base parameters and a strided sample of their values, rounded
    to bfloat16 (fp32, fp16 and bf16 loads agree). LoRA parameters are skipped and PEFT's
    names mapped back, so the fingerprint is the same before and after LoRA is applied.
    Call it before DeepSpeed ZeRO-3 partitions the weights. See benchmarks/RESULTS.md
    for the time on a 10B model.

    Returns:
        64 hex digits.
    """
    from recsysllm.modeling.families import model_fingerprint as family_fingerprint

    return family_fingerprint(model)


def tensors_fingerprint(arch: dict[str, object], tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of ``arch`` (JSON), every tensor's name and shape, and a strided sample of each.

    The sample is ``_SAMPLES_PER_TENSOR`` evenly spaced values (every value of a smaller
    tensor) rounded to bfloat16. Used by :func:`model_fingerprint`; benchmarks call it on
    a state dict directly.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(arch, sort_keys=True).encode())
    for name in sorted(tensors):
        digest.update(f"{name}:{tuple(tensors[name].shape)};".encode())
    for name in sorted(tensors):
        flat = tensors[name].detach().reshape(-1)
        if flat.numel() == 0:
            raise ValueError(
                f"model_fingerprint: parameter {name!r} is empty (partitioned by ZeRO-3? "
                "take the fingerprint before)"
            )
        count = min(_SAMPLES_PER_TENSOR, flat.numel())
        # Integer arithmetic: float32 linspace rounds indices past 2**24 (out of bounds).
        steps = torch.arange(count, dtype=torch.int64, device=flat.device)
        index = steps * (flat.numel() - 1) // max(count - 1, 1)
        sample = flat[index].to(torch.bfloat16).view(torch.int16).cpu()
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 hex of a file's bytes, read in 16 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weight_checksums(directory: str | os.PathLike[str]) -> dict[str, str]:
    """File name -> sha256 of each weight file (``*.safetensors``) at the top of ``directory``."""
    directory = Path(directory)
    return {
        path.name: file_sha256(path)
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name.endswith(WEIGHT_FILE_SUFFIXES)
    }


def verify_weights(directory: str | os.PathLike[str], meta: CheckpointMeta) -> None:
    """Refuse weight files that differ from the checksums recorded in the meta.

    Raises:
        CorruptWeightsError: a recorded file is missing, or its bytes hash differently
            (flipped bits, truncation, an edit), naming the file.
    """
    directory = Path(directory)
    for name, expected in sorted(meta.weights_sha256.items()):
        path = directory / name
        if not path.is_file():
            raise CorruptWeightsError(
                f"{path}: missing; {META_FILENAME} records it with sha256 {expected[:16]}..."
            )
        found = file_sha256(path)
        if found != expected:
            raise CorruptWeightsError(
                f"{path}: sha256 {found[:16]}... differs from {expected[:16]}... recorded in "
                f"{META_FILENAME} when it was written: the file is corrupt or was modified"
            )


def write_meta(directory: str | os.PathLike[str], meta: CheckpointMeta) -> Path:
    """Write ``recsysllm_meta.json`` into ``directory`` atomically; returns its path.

    Write the weights first: the checksums of the weight files found in ``directory``
    (:func:`weight_checksums`) replace ``meta.weights_sha256``.
    """
    Path(directory).mkdir(parents=True, exist_ok=True)
    meta = dataclasses.replace(meta, weights_sha256=weight_checksums(directory))
    return atomic_write(
        Path(directory) / META_FILENAME, json.dumps(dataclasses.asdict(meta), indent=2) + "\n"
    )


def read_meta(directory: str | os.PathLike[str]) -> CheckpointMeta:
    """Read ``recsysllm_meta.json`` from a checkpoint directory.

    Raises:
        FileNotFoundError: the file is missing (not a recsysllm checkpoint).
        ValueError: the file is not valid JSON, misses fields or has an unknown format version.
    """
    path = Path(directory) / META_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {directory} is not a recsysllm checkpoint")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: corrupt JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("format_version") != FORMAT_VERSION:
        hint = (
            " (format 1 fingerprinted 4 tensors of the base model and recorded no weight "
            "checksums; this checkpoint cannot be verified, train it again)"
            if raw.get("format_version") == 1
            else ""
        )
        raise ValueError(
            f"{path}: field format_version is {raw.get('format_version')!r}, this recsysllm "
            f"reads {FORMAT_VERSION}{hint}"
        )
    known = {f.name for f in dataclasses.fields(CheckpointMeta)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown fields {unknown}")
    required = {
        f.name for f in dataclasses.fields(CheckpointMeta) if f.default is dataclasses.MISSING
    }
    required -= {"created", "added_token_ids"}  # added_token_ids: absent before it existed
    missing = sorted(required - set(raw))
    if missing:
        raise ValueError(f"{path}: missing fields {missing}")
    checksums = raw["weights_sha256"]
    if not isinstance(checksums, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in checksums.items()
    ):
        raise ValueError(f"{path}: field weights_sha256 must map file names to sha256 strings")
    return CheckpointMeta(**raw)


def check_compatible(
    meta: CheckpointMeta,
    *,
    base_model_fingerprint: str | None = None,
    tokenizer_fingerprint: str | None = None,
    catalog_hash: str | None = None,
    where: str,
) -> None:
    """Refuse a checkpoint whose recorded fingerprints differ from what it is used with.

    Only the fingerprints passed (not None) are compared.

    Args:
        meta: the checkpoint's :class:`CheckpointMeta`.
        base_model_fingerprint: :func:`model_fingerprint` of the base model about to be used.
        tokenizer_fingerprint: fingerprint of the tokenizer about to be used.
        catalog_hash: hash of the entity catalog about to be used.
        where: the checkpoint directory, named in the error.

    Raises:
        CheckpointMismatchError: naming every field that differs, expected vs found.
    """
    checks = (
        ("base model", "base_model_fingerprint", base_model_fingerprint),
        ("tokenizer", "tokenizer_fingerprint", tokenizer_fingerprint),
        ("entity catalog", "catalog_hash", catalog_hash),
    )
    problems = []
    for what, name, found in checks:
        expected = getattr(meta, name)
        if found is not None and expected is not None and found != expected:
            problems.append(
                f"{what} differs: {name} recorded in the checkpoint {expected[:16]}..., found {found[:16]}..."
            )
    if problems:
        base = f" (trained on base model {meta.base_model})" if meta.base_model else ""
        raise CheckpointMismatchError(f"{where}{base}: " + "; ".join(problems))
