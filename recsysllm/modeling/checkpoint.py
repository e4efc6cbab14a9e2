"""Loading THUDM GLM checkpoints and converting them to safetensors directories.

A checkpoint directory holds ``config.json`` (THUDM's, ``model_type: glm``, or ours,
``model_type: recsysllm_glm``) and weights in one of: ``model.safetensors``,
``model.safetensors.index.json`` + shards, ``pytorch_model.bin`` (THUDM's fp16
pickle), ``pytorch_model.bin.index.json`` + shards. Keys may carry the ``glm.``
prefix or not.

Memory: glm-10b is 20 GB in fp16. Loading never holds two copies of it: pickles are
opened with ``torch.load(mmap=True)`` (tensors stay backed by the file's pages), the
model is built on the meta device (no allocation), and the loaded tensors become the
model's parameters through ``load_state_dict(assign=True)`` without a copy. A
``torch_dtype`` conversion replaces one tensor at a time. Conversion streams the same
tensors into one ``model.safetensors`` (safetensors writes from the tensors' memory).

Example:
    >>> model = load_glm_checkpoint("checkpoints/glm-10b", torch_dtype=torch.bfloat16)  # doctest: +SKIP
    $ recsysllm convert checkpoints/glm-10b checkpoints/glm-10b-st
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from recsysllm.files import atomic_directory
from recsysllm.modeling.configuration_glm import GLMConfig
from recsysllm.modeling.modeling_glm import GLMForConditionalGeneration

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"
PICKLE_INDEX_FILE = "pytorch_model.bin.index.json"
# Looked up in this order: a directory that has several uses the first.
_WEIGHT_FILES = (SAFETENSORS_INDEX_FILE, SAFETENSORS_FILE, PICKLE_INDEX_FILE, PICKLE_FILE)
TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
_PREFIX = "glm."


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message names the file."""


def load_glm_checkpoint(
    path: str | Path, torch_dtype: torch.dtype | None = None
) -> GLMForConditionalGeneration:
    """Loads a THUDM or converted GLM checkpoint directory.

    Args:
        path: the checkpoint directory.
        torch_dtype: dtype of the returned model; None keeps the stored dtype
            (fp16 for THUDM's pickles).

    Returns:
        The model, in eval mode, with its output layer tied to the word embeddings.

    Raises:
        CheckpointError: no config or weights, missing keys, a tensor whose shape does
            not match the config (naming file, key, expected and found shape).
        ValueError: a bad config.json field (naming file and field).
    """
    path = Path(path)
    config = read_glm_config(path)
    with torch.device("meta"):
        # Parameters on the meta device cost nothing; the loaded tensors replace them.
        model = GLMForConditionalGeneration(config)
    state_dict = _read_state_dict(path, model)
    if torch_dtype is not None:
        for key in list(state_dict):
            # One tensor at a time, so the stored and the converted copy never coexist whole.
            state_dict[key] = state_dict[key].to(torch_dtype)
    result = model.load_state_dict(
        {_PREFIX + key: tensor for key, tensor in state_dict.items()}, strict=False, assign=True
    )
    # _read_state_dict checked the keys: only the tied lm_head is left, for tie_weights.
    if result.unexpected_keys or set(result.missing_keys) != {"lm_head.weight"}:
        raise RuntimeError(f"{path}: inconsistent key check ({result})")
    model.tie_weights()
    model.config.dtype = model.glm.word_embeddings.weight.dtype
    return model.eval()


def read_glm_config(path: str | Path) -> GLMConfig:
    """Reads ``config.json`` of a checkpoint directory: ours or THUDM's.

    Raises:
        CheckpointError: no config.json.
        ValueError: a bad field (naming file and field).
    """
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: not found (a GLM checkpoint directory needs one)")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_path}: not valid JSON ({error})") from error
    model_type = raw.get("model_type", "glm") if isinstance(raw, dict) else None
    if model_type == GLMConfig.model_type:
        return GLMConfig.from_json_file(str(config_path))
    if model_type != "glm":
        raise CheckpointError(
            f"{config_path}: field 'model_type' is {model_type!r}; expected 'glm' (THUDM) "
            f"or {GLMConfig.model_type!r} (converted)"
        )
    return GLMConfig.from_thudm_json(config_path)


def convert_checkpoint(src_dir: str | Path, out_dir: str | Path) -> Path:
    """Converts a GLM checkpoint directory to ``model.safetensors`` + our config.json.

    Tokenizer files present in ``src_dir`` (vocab.json, merges.txt, vocab.txt, *.model,
    tokenizer_config.json, ...) are copied. The output is written to a temporary
    directory next to ``out_dir`` and renamed into place, so a failed conversion
    leaves nothing behind. The result loads with ``AutoModel.from_pretrained(out_dir)``
    after ``import recsysllm.modeling``.

    Returns:
        ``out_dir``.

    Raises:
        FileExistsError: ``out_dir`` exists and is not empty.
        CheckpointError / ValueError: as :func:`load_glm_checkpoint`.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir}: already exists and is not an empty directory")
    config = read_glm_config(src_dir)
    with torch.device("meta"):
        reference = GLMForConditionalGeneration(config)
    state_dict = _read_state_dict(src_dir, reference)
    tensors = {_PREFIX + key: _standalone(tensor) for key, tensor in state_dict.items()}

    # Built under a temp name and renamed (an existing out_dir is empty, checked above).
    with atomic_directory(out_dir) as tmp_dir:
        save_file(tensors, tmp_dir / SAFETENSORS_FILE, metadata={"format": "pt"})
        config.architectures = [GLMForConditionalGeneration.__name__]
        config.dtype = tensors[_PREFIX + "word_embeddings.weight"].dtype
        config.save_pretrained(tmp_dir)
        for name in _tokenizer_files(src_dir):
            shutil.copy2(src_dir / name, tmp_dir / name)
    return out_dir


def check_vocab_compatible(model_vocab_size: int, tokenizer_vocab_size: int, where: str) -> None:
    """Raises when the tokenizer has ids the model's embedding has no row for.

    A model may have more rows than the tokenizer has ids (THUDM pads to a multiple
    of 128); the reverse would index past the embedding.

    Args:
        model_vocab_size: rows of the word embedding (``config.vocab_size``).
        tokenizer_vocab_size: number of token ids of the tokenizer.
        where: what to name in the error, e.g. the checkpoint path.
    """
    if tokenizer_vocab_size > model_vocab_size:
        raise ValueError(
            f"{where}: the tokenizer has {tokenizer_vocab_size} token ids but the model's "
            f"word embedding has only {model_vocab_size} rows; use the tokenizer the "
            "checkpoint was trained with"
        )


def convert_main(argv: list[str] | None = None) -> int:
    """``recsysllm convert SRC OUT``: THUDM GLM directory -> safetensors directory."""
    parser = argparse.ArgumentParser(
        prog="recsysllm convert",
        description="Convert a THUDM GLM checkpoint directory (config.json + pytorch_model.bin "
        "or shards) to model.safetensors + a recsysllm config.json, copying tokenizer files.",
    )
    parser.add_argument("src", help="THUDM (or converted) checkpoint directory")
    parser.add_argument("out", help="output directory (must not exist or be empty)")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out_dir = convert_checkpoint(args.src, args.out)
    except (ValueError, OSError) as error:
        print(f"recsysllm convert: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out_dir}")
    return 0


def _read_state_dict(path: Path, model: GLMForConditionalGeneration) -> dict[str, torch.Tensor]:
    """Backbone tensors keyed without the ``glm.`` prefix, checked against ``model``'s shapes."""
    expected = {
        key.removeprefix(_PREFIX): tuple(tensor.shape)
        for key, tensor in model.state_dict().items()
        if key.startswith(_PREFIX)
    }
    found: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    extra: list[str] = []
    for file, tensors in _iter_weight_files(path):
        for key, tensor in tensors.items():
            bare = key.removeprefix(_PREFIX)
            if bare not in expected:
                extra.append(key)
                continue
            if not isinstance(tensor, torch.Tensor):
                raise CheckpointError(f"{file}: {key!r} is a {type(tensor).__name__}, not a tensor")
            if bare in found:
                raise CheckpointError(
                    f"{file}: {key!r} duplicates a key already read from {origin[bare]}"
                )
            if tuple(tensor.shape) != expected[bare]:
                raise CheckpointError(
                    f"{file}: tensor {key!r} has shape {list(tensor.shape)}, expected "
                    f"{list(expected[bare])} from {path / CONFIG_FILE}"
                )
            found[bare], origin[bare] = tensor, file
    missing = sorted(set(expected) - set(found))
    if missing:
        raise CheckpointError(
            f"{path}: {len(missing)} key(s) missing from the weights: {', '.join(missing)}"
        )
    if extra:
        logger.warning(
            "%s: ignoring %d key(s) GLMForConditionalGeneration does not use: %s",
            path,
            len(extra),
            ", ".join(sorted(extra)),
        )
    return found


def _iter_weight_files(path: Path) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    """Yields (file, {key: tensor}) for each weight file of the directory, one at a time."""
    name = next((name for name in _WEIGHT_FILES if (path / name).is_file()), None)
    if name is None:
        raise CheckpointError(f"{path}: no weights found (looked for {', '.join(_WEIGHT_FILES)})")
    if not name.endswith(".index.json"):
        yield path / name, _load_weight_file(path / name)
        return
    index_path = path / name
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"{index_path}: not an index with a 'weight_map' ({error!r})"
        ) from error
    for shard in sorted(set(weight_map.values())):
        shard_path = path / shard
        if not shard_path.is_file():
            raise CheckpointError(f"{index_path}: shard {shard!r} listed in 'weight_map' not found")
        tensors = _load_weight_file(shard_path)
        listed = {key for key, file in weight_map.items() if file == shard}
        absent = sorted(listed - set(tensors))
        if absent:
            raise CheckpointError(
                f"{shard_path}: keys listed in {index_path.name} are absent: {absent}"
            )
        yield shard_path, tensors


def _load_weight_file(file: Path) -> dict[str, torch.Tensor]:
    if file.name.endswith(".safetensors"):
        try:
            return load_file(file)
        except Exception as error:  # SafetensorError names no file: a truncated or corrupt one
            raise CheckpointError(f"{file}: cannot be read as safetensors ({error})") from error
    # mmap needs the zip format (torch >= 1.6); older pickles are read into memory.
    mmap = zipfile.is_zipfile(file)
    try:
        state_dict = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        raise CheckpointError(
            f"{file}: cannot be read as a weights-only torch pickle ({error})"
        ) from error
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{file}: expected a state dict, found a {type(state_dict).__name__}")
    return state_dict


def _standalone(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor owning its storage (safetensors refuses views and shared storage)."""
    tensor = tensor.contiguous()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor


def _tokenizer_files(src_dir: Path) -> list[str]:
    names = [name for name in TOKENIZER_FILES if (src_dir / name).is_file()]
    return names + sorted(file.name for file in src_dir.glob("*.model") if file.is_file())
