"""The on-disk checkpoint format: layout, writer, reader (metadata and checksums in
:mod:`recsysllm.checkpoint_meta`).

Checkpoint directory layout (every ``checkpoint-N/`` and ``final/``)::

    adapter_model.safetensors, adapter_config.json   LoRA runs (PEFT format; rows of
                                                     role tokens the tokenizer added are
                                                     PEFT trainable tokens in the adapter)
    model.safetensors, config.json                   full-parameter runs
    config.yaml                                      the resolved training config
    tokenizer/                                       the tokenizer's save_pretrained
    prompts/                                         the prompt set trained on
    catalog.json                                     EntityCatalog.save
    candidates.json                                  stored direct candidates (valid/test)
    user_features.json                               user-feature templates of the data
                                                     (column -> "is {value} years old")
    recsysllm_meta.json                              CheckpointMeta (fingerprints, checksums)
    README.md                                        model card
    optimizer.pt, scheduler.pt, rng_state.pth,
    trainer_state.json (checkpoint-N only)           HF Trainer state for resuming
    global_stepN/ (checkpoint-N, DeepSpeed runs)     DeepSpeed's partitioned optimizer state
    training_args.bin                                HF TrainingArguments (pickle, HF's own)

The weights and the Trainer state are written by transformers/PEFT; :func:`write_extras`
writes everything else, the meta file (whose checksums cover the weights) and the model
card last. :func:`load_checkpoint_for_inference` reads a checkpoint back for generation.
Checkpoints written before ``user_features.json`` existed still load; their feature
templates are unknown (:func:`read_feature_templates` returns None).

Example:
    >>> model, tokenizer, catalog, prompts, meta, config = load_checkpoint_for_inference(
    ...     "runs/tiny/final")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from recsysllm.checkpoint_meta import (
    META_FILENAME,
    CheckpointMeta,
    CheckpointMismatchError,
    check_compatible,
    model_fingerprint,
    read_meta,
    verify_weights,
    write_meta,
)
from recsysllm.config import Config, config_from_dict
from recsysllm.data.catalog import EntityCatalog
from recsysllm.data.splits import RecSplits
from recsysllm.files import atomic_write, read_yaml
from recsysllm.modeling.families import get_backbone, resolve_family
from recsysllm.prompts import PromptSet, load_prompts
from recsysllm.tokenization import load_tokenizer, read_json

CONFIG_FILENAME = "config.yaml"
TOKENIZER_DIRNAME = "tokenizer"
PROMPTS_DIRNAME = "prompts"
CATALOG_FILENAME = "catalog.json"
CANDIDATES_FILENAME = "candidates.json"
FEATURES_FILENAME = "user_features.json"
ADAPTER_CONFIG_FILENAME = "adapter_config.json"
MODEL_CARD_FILENAME = "README.md"
__all__ = [
    "ADAPTER_CONFIG_FILENAME",
    "CANDIDATES_FILENAME",
    "CATALOG_FILENAME",
    "CONFIG_FILENAME",
    "FEATURES_FILENAME",
    "META_FILENAME",
    "MODEL_CARD_FILENAME",
    "PROMPTS_DIRNAME",
    "TOKENIZER_DIRNAME",
    "load_checkpoint_for_inference",
    "model_card",
    "read_feature_templates",
    "write_extras",
]


def model_card(config: Config, meta: CheckpointMeta) -> str:
    """README.md of a checkpoint: what it is and how to load it."""
    base = meta.base_model or "none (trained from scratch)"
    kind = "LoRA adapter (PEFT, safetensors)" if meta.lora else "full model weights (safetensors)"
    family = resolve_family(config.model.family, meta.base_model)
    targets = config.lora.target_modules or "the family's default targets"
    peft_usage = (
        f"""
With PEFT directly:

```python
from peft import PeftModel
from recsysllm.modeling.families import get_backbone

base = get_backbone("{family}").load_checkpoint("{meta.base_model}")
model = PeftModel.from_pretrained(base, "path/to/this/checkpoint")
```
"""
        if meta.lora
        else ""
    )
    added = (
        f"\n- Token rows added for special roles (trained, in the adapter): {meta.added_token_ids}"
        if meta.added_token_ids
        else ""
    )
    return f"""# RecSysLLM checkpoint (step {meta.step})

- Contents: {kind}, tokenizer/, prompts/, catalog.json, user_features.json, config.yaml, recsysllm_meta.json
- Base model: {base} (family {family})
- Data: {config.data.source} ({config.data.path}{", " + config.data.category if config.data.category else ""}), {config.data.k_core}-core, leave-one-out
- Task mixture: {config.data.mixture}
- Max length: {config.data.max_length}, packing: {config.data.packing}
- LoRA: {f"r={config.lora.r}, alpha={config.lora.alpha}, on {targets}" if config.lora.enabled else "off"}{added}
- Optimisation: AdamW, peak lr {config.train.learning_rate}, {config.train.precision}
- Fingerprints: base {meta.base_model_fingerprint[:16]}, tokenizer {meta.tokenizer_fingerprint[:16]}, catalog {(meta.catalog_hash or "")[:16]}

## Load with recsysllm

```python
from recsysllm.checkpoints import load_checkpoint_for_inference

model, tokenizer, catalog, prompts, meta, config = load_checkpoint_for_inference("path/to/this/checkpoint")
```

```python
from recsysllm.api import Recommender

rec = Recommender.from_checkpoint("path/to/this/checkpoint")
```

Loading refuses a base model, tokenizer or catalog other than the ones recorded in
`recsysllm_meta.json`.
{peft_usage}"""


def read_checkpoint_config(checkpoint_dir: str | os.PathLike) -> Config:
    """The checkpoint's resolved training config (``config.yaml``).

    Older checkpoints keep the names they were trained with, whatever today's defaults
    are: one written before ``data.item_name_max_tokens`` existed used full titles (reads
    as null), one written before ``data.item_name_disambiguation`` existed numbered its
    capped names (reads as ``"number"``).
    """
    path = Path(checkpoint_dir) / CONFIG_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    raw = read_yaml(path) or {}
    data = raw.get("data")
    if isinstance(data, dict):
        data.setdefault("item_name_max_tokens", None)
        if data["item_name_max_tokens"] is not None:
            data.setdefault("item_name_disambiguation", "number")
    return config_from_dict(raw, where=str(path))


def write_extras(
    directory: str | os.PathLike,
    *,
    config: Config,
    tokenizer: Any,
    prompts: PromptSet,
    catalog: EntityCatalog,
    splits: RecSplits,
    feature_templates: Mapping[str, str],
    meta: CheckpointMeta,
) -> None:
    """Writes everything besides the weights and Trainer state into ``directory``.

    Call it after the weights: the meta file records their checksums. Each file is
    written atomically; the model card goes last (PEFT writes a generic README first).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_yaml(directory / CONFIG_FILENAME)
    tokenizer.save_pretrained(directory / TOKENIZER_DIRNAME)
    prompts.save(directory / PROMPTS_DIRNAME)
    catalog.save(directory / CATALOG_FILENAME)
    splits.save_candidates(directory / CANDIDATES_FILENAME)
    record = {"feature_templates": dict(feature_templates)}
    atomic_write(directory / FEATURES_FILENAME, json.dumps(record, indent=2) + "\n")
    write_meta(directory, meta)
    atomic_write(directory / MODEL_CARD_FILENAME, model_card(config, meta))


def read_feature_templates(directory: str | os.PathLike) -> dict[str, str] | None:
    """The user-feature templates saved with a checkpoint; None for a checkpoint written
    before they were saved (no ``user_features.json``).

    Raises:
        ValueError: the file is malformed, naming it and the field.
    """
    path = Path(directory) / FEATURES_FILENAME
    if not path.is_file():
        return None
    record = read_json(path)
    templates = record.get("feature_templates") if isinstance(record, dict) else None
    if not isinstance(templates, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and "{value}" in v for k, v in templates.items()
    ):
        raise ValueError(
            f"{path}: field 'feature_templates' must map feature columns to templates "
            "containing {value}"
        )
    return templates


def load_checkpoint_for_inference(
    checkpoint_dir: str | Path,
    base_model: str | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.nn.Module, Any, EntityCatalog, PromptSet, CheckpointMeta, Config]:
    """Load a training checkpoint (``checkpoint-N/`` or ``final/``) for generation.

    A LoRA checkpoint is applied to its base model (``base_model``, else the path recorded
    in the checkpoint) and merged into it, so the result is a plain model of its family.
    Role tokens the tokenizer added get their embedding rows first (the family's
    ``prepare_embeddings``, as in training); the adapter restores their trained values. A
    base model, tokenizer, catalog or added-token layout different from the recorded
    ones is refused.

    Args:
        checkpoint_dir: the checkpoint directory.
        base_model: base checkpoint directory, when it moved since training.
        device: where to put the model (default: CPU).

    Returns:
        ``(model, tokenizer, catalog, prompts, meta, config)``; the model is in eval mode.

    Raises:
        FileNotFoundError / ValueError: a missing or corrupt file, named.
        CheckpointMismatchError: the base model or tokenizer differs from the recorded one.
        CorruptWeightsError: a weight file differs from its recorded sha256.
    """
    checkpoint_dir = Path(checkpoint_dir)
    where = str(checkpoint_dir)
    meta = read_meta(checkpoint_dir)
    verify_weights(checkpoint_dir, meta)  # flipped bytes are refused, not evaluated
    config = read_checkpoint_config(checkpoint_dir)
    tokenizer = load_tokenizer(checkpoint_dir / TOKENIZER_DIRNAME, saved=True)
    check_compatible(meta, tokenizer_fingerprint=tokenizer.fingerprint, where=where)
    catalog = EntityCatalog.load(checkpoint_dir / CATALOG_FILENAME)
    check_compatible(meta, catalog_hash=catalog.hash, where=where)
    prompts = load_prompts(checkpoint_dir / PROMPTS_DIRNAME)
    dtype = getattr(torch, config.model.torch_dtype)  # a validated name: float32, bfloat16, ...
    weights_dir = checkpoint_dir
    if meta.lora:
        weights_dir = base_model or meta.base_model
        if weights_dir is None:
            raise ValueError(
                f"{where}: a LoRA checkpoint without a recorded base model; pass base_model"
            )
    family = get_backbone(resolve_family(config.model.family, weights_dir))
    model = family.load_checkpoint(weights_dir, torch_dtype=dtype)
    if meta.lora:
        check_compatible(meta, base_model_fingerprint=model_fingerprint(model), where=where)
    added = family.prepare_embeddings(model, tokenizer, where=where)
    if list(added) != list(meta.added_token_ids):
        raise CheckpointMismatchError(
            f"{where}: the tokenizer adds token rows {list(added)}, {META_FILENAME} records "
            f"{meta.added_token_ids}"
        )
    if meta.lora:
        model = PeftModel.from_pretrained(model, checkpoint_dir).merge_and_unload()
    model = model.to(device or "cpu").eval()
    return model, tokenizer, catalog, prompts, meta, config
