"""Builders that turn config sections into plain objects: data, tokenizer, model, checkpoints.

Configs never reach into components: these functions read a config section and call each
component with plain keyword arguments. Training (:mod:`recsysllm.training`), evaluation
and the downstream API share them, so they all rebuild the same data split and load
checkpoints the same way.

Stable entry points (used by evaluation and the API):

- :func:`prepare_data` -> :class:`PreparedData` (tables, splits, catalog, prompts, tasks)
- :func:`load_checkpoint_for_inference` -> (model, tokenizer, catalog, prompts, meta, config)

Checkpoint directory layout (every ``checkpoint-N/`` and ``final/``)::

    adapter_model.safetensors, adapter_config.json   LoRA runs (PEFT format)
    model.safetensors, config.json                   full-parameter runs (from scratch)
    config.yaml                                      the resolved training config
    tokenizer/                                       GLMTokenizer.save_pretrained
    prompts/                                         the prompt set trained on
    catalog.json                                     EntityCatalog.save
    candidates.json                                  stored direct candidates (valid/test)
    recsysllm_meta.json                              CheckpointMeta (fingerprints)
    README.md                                        model card
    optimizer.pt, scheduler.pt, rng_state.pth,
    trainer_state.json (checkpoint-N only)           HF Trainer state for resuming
    global_stepN/ (checkpoint-N, DeepSpeed runs)     DeepSpeed's partitioned optimizer state
    training_args.bin                                HF TrainingArguments (pickle, HF's own)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from recsysllm.checkpoint_meta import (
    CheckpointMeta,
    check_compatible,
    model_fingerprint,
    read_meta,
    verify_weights,
)
from recsysllm.config import Config, DataArgs, LoraArgs, ModelArgs, TokenizerArgs, load_config
from recsysllm.data.catalog import EntityCatalog
from recsysllm.data.sampling import SamplingConfig
from recsysllm.data.sources import load_dataset_by_name
from recsysllm.data.splits import RecSplits, build_splits
from recsysllm.data.tables import RecTables
from recsysllm.data.tasks import TaskBuilder, TaskMixture
from recsysllm.modeling import (
    GLMConfig,
    GLMForConditionalGeneration,
    check_vocab_compatible,
    load_glm_checkpoint,
)
from recsysllm.prompt_layout import AnswerBudget
from recsysllm.prompts import PromptSet, load_prompts
from recsysllm.tokenization import (
    GLMTokenizer,
    load_saved_tokenizer,
    train_sentencepiece_tokenizer,
)

logger = logging.getLogger(__name__)

CONFIG_FILENAME = "config.yaml"
TOKENIZER_DIRNAME = "tokenizer"
PROMPTS_DIRNAME = "prompts"
CATALOG_FILENAME = "catalog.json"
CANDIDATES_FILENAME = "candidates.json"
ADAPTER_CONFIG_FILENAME = "adapter_config.json"
# Texts fed to sentencepiece training: enough to cover the vocabulary of prompts and titles.
_SENTENCEPIECE_TRAINING_TEXTS = 50_000
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class PreparedData:
    """Everything the data phase produces for one config.

    Attributes:
        tables: the raw tables of the source.
        splits: k-core filtered, leave-one-out splits with stored direct candidates.
        catalog: the entity catalog of the splits (item titles + attribute values).
        prompts: the prompt set.
        tasks: the TaskBuilder: ``tasks.training_examples(mixture, seed, epoch)`` for
            training, ``tasks.examples(split, families, prompts=..., seed=...)`` for evaluation.
    """

    tables: RecTables
    splits: RecSplits
    catalog: EntityCatalog
    prompts: PromptSet
    tasks: TaskBuilder


def sampling_config(data_args: DataArgs) -> SamplingConfig:
    """The behaviour-sampling fields of ``data_args`` as a :class:`SamplingConfig`."""
    return SamplingConfig(
        short_ratio=data_args.short_ratio,
        medium_ratio=data_args.medium_ratio,
        long_ratio=data_args.long_ratio,
        short_window_days=data_args.short_window_days,
        medium_window_days=data_args.medium_window_days,
        short_fraction=data_args.short_fraction,
        medium_fraction=data_args.medium_fraction,
    )


def answer_budget(data_args: DataArgs, catalog: EntityCatalog, tokenizer: Any) -> AnswerBudget:
    """The answer tokens prompts reserve (``prompt_layout``): the same in training and inference."""
    return AnswerBudget.for_catalog(catalog, tokenizer, text=data_args.answer_text_tokens)


def task_mixture(data_args: DataArgs) -> TaskMixture:
    """The epoch mixture of ``data_args`` as a :class:`TaskMixture`."""
    return TaskMixture(
        weights=dict(data_args.mixture),
        examples_per_epoch=data_args.examples_per_epoch,
        templates=None if data_args.train_templates is None else tuple(data_args.train_templates),
    )


def prepare_data(data_args: DataArgs, seed: int, prompts: PromptSet | None = None) -> PreparedData:
    """Load the source, split it, build the catalog and the task builder.

    Deterministic in ``(data_args, seed)``: training and evaluation that pass the same
    config get the same split, catalog (same hash) and stored candidates.

    Args:
        data_args: the ``data`` section.
        seed: seed of the splits' direct candidates and of the task builder.
        prompts: a prompt set to use instead of ``data_args.prompts_dir`` (e.g. the one
            saved in a checkpoint).
    """
    tables = load_dataset_by_name(data_args.source, data_args.path, category=data_args.category)
    return prepare_from_tables(tables, data_args, seed, prompts)


def prepare_from_tables(
    tables: RecTables, data_args: DataArgs, seed: int, prompts: PromptSet | None = None
) -> PreparedData:
    """:func:`prepare_data` on tables already in memory (``data_args.source``/``path`` unused)."""
    # No stored candidate lists for a direct family that is not used (weight 0).
    direct_used = data_args.mixture.get("direct", 0) > 0
    splits = build_splits(
        tables,
        k=data_args.k_core,
        seed=seed,
        num_negatives=data_args.num_negatives if direct_used else 0,
        exact_negatives=data_args.exact_negatives,
    )
    catalog = EntityCatalog.from_tables(splits.tables)
    if prompts is None:
        prompts = load_prompts(data_args.prompts_dir)
    tasks = TaskBuilder(
        splits,
        catalog,
        prompts,
        sampling=sampling_config(data_args),
        history_budget=data_args.history_budget,
    )
    return PreparedData(tables=tables, splits=splits, catalog=catalog, prompts=prompts, tasks=tasks)


def _segment_text(example: Any) -> str:
    return "".join((" " + s.text) if s.is_entity else s.text for s in example.segments)


def build_tokenizer(
    tokenizer_args: TokenizerArgs,
    data: PreparedData,
    output_dir: str | Path,
    *,
    base_model: str | None = None,
    mixture: TaskMixture | None = None,
    seed: int = 0,
) -> Any:
    """Load or train the tokenizer.

    - ``tokenizer_args.path``: that directory.
    - ``tokenizer_args.sentencepiece_vocab_size``: a sentencepiece model trained on the
      catalog's entity names and the texts of epoch 0's training examples, saved under
      ``output_dir/tokenizer``. If that directory exists (a resumed run) it is reused:
      the checkpoint's tokenizer fingerprint then guards against a changed data set.
    - otherwise: the base model's directory (``base_model``).

    Returns:
        A ``GLMTokenizer``.
    """
    if tokenizer_args.path is not None:
        return GLMTokenizer.from_pretrained(tokenizer_args.path)
    if tokenizer_args.sentencepiece_vocab_size is None:
        if base_model is None:
            raise ValueError("config field tokenizer.path: needed when model.base_model is null")
        return GLMTokenizer.from_pretrained(base_model)
    target = Path(output_dir) / TOKENIZER_DIRNAME
    if target.exists():
        logger.info("reusing the sentencepiece tokenizer in %s", target)
        # Only a complete save_pretrained directory: a half-written one is refused.
        return load_saved_tokenizer(target)
    texts = list(data.catalog.entities().values())
    examples = data.tasks.training_examples(mixture or TaskMixture(), seed=seed, epoch=0)
    texts += [_segment_text(e) for e in examples[:_SENTENCEPIECE_TRAINING_TEXTS]]
    texts += [t.text for family in data.prompts.families for t in data.prompts.templates(family)]
    return train_sentencepiece_tokenizer(
        texts, target, vocab_size=tokenizer_args.sentencepiece_vocab_size
    )


@dataclass
class BuiltModel:
    """The model to train and the fingerprint of its base weights (taken before LoRA)."""

    model: torch.nn.Module
    base_model_fingerprint: str


def build_model(
    model_args: ModelArgs, lora_args: LoraArgs, tokenizer: Any, seed: int = 0
) -> BuiltModel:
    """Load or build the GLM and wrap it with LoRA.

    - ``model_args.base_model``: the checkpoint via ``load_glm_checkpoint``; the tokenizer
      must fit its embedding (``check_vocab_compatible``).
    - ``model_args.from_scratch``: a random GLM (seeded by ``seed``) with
      ``vocab_size`` = the tokenizer's size rounded up to a multiple of 64.
    - ``lora_args.enabled``: PEFT LoRA on ``target_modules`` (only adapters train), or the
      adapter in ``lora_args.init_adapter`` loaded as trainable; its recorded base-model
      fingerprint must match.

    Returns:
        :class:`BuiltModel` with the model in train mode.
    """
    dtype = TORCH_DTYPES[model_args.torch_dtype]
    if model_args.base_model is not None:
        model = load_glm_checkpoint(model_args.base_model, torch_dtype=dtype)
        where = model_args.base_model
    else:
        # Rounded to a multiple of 64: tensor-core friendly, like THUDM's padding to 128.
        vocab_size = -(-tokenizer.vocab_size // 64) * 64
        config = GLMConfig(**{"vocab_size": vocab_size, **model_args.from_scratch})
        torch.manual_seed(seed)
        model = GLMForConditionalGeneration(config).to(dtype)
        where = "model.from_scratch"
    check_vocab_compatible(model.config.vocab_size, tokenizer.vocab_size, where=where)
    # A runtime choice, not architecture: the fingerprint does not depend on it.
    model.config.attention_implementation = model_args.attention_implementation
    fingerprint = model_fingerprint(model)
    if lora_args.enabled:
        model = apply_lora(model, lora_args, fingerprint)
    model.train()
    return BuiltModel(model=model, base_model_fingerprint=fingerprint)


def apply_lora(
    model: torch.nn.Module, lora_args: LoraArgs, base_model_fingerprint: str
) -> torch.nn.Module:
    """Freeze ``model`` and add trainable LoRA adapters (new, or ``lora_args.init_adapter``)."""
    if lora_args.init_adapter is not None:
        adapter_dir = Path(lora_args.init_adapter)
        if (adapter_dir / "recsysllm_meta.json").is_file():
            adapter_meta = read_meta(adapter_dir)
            check_compatible(
                adapter_meta,
                base_model_fingerprint=base_model_fingerprint,
                where=str(adapter_dir),
            )
            verify_weights(adapter_dir, adapter_meta)
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    lora_config = LoraConfig(
        r=lora_args.r,
        lora_alpha=lora_args.alpha,
        lora_dropout=lora_args.dropout,
        target_modules=list(lora_args.target_modules),
        bias="none",
    )
    return get_peft_model(model, lora_config)


def load_checkpoint_for_inference(
    checkpoint_dir: str | Path,
    base_model: str | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.nn.Module, Any, EntityCatalog, PromptSet, CheckpointMeta, Config]:
    """Load a training checkpoint (``checkpoint-N/`` or ``final/``) for generation.

    A LoRA checkpoint is applied to its base model (``base_model``, else the path recorded
    in the checkpoint) and merged into it, so the result is a plain
    ``GLMForConditionalGeneration``. A base model, tokenizer or catalog different from the
    ones the checkpoint was trained with is refused.

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
    config = load_config(checkpoint_dir / CONFIG_FILENAME)
    tokenizer = load_saved_tokenizer(checkpoint_dir / TOKENIZER_DIRNAME)
    check_compatible(meta, tokenizer_fingerprint=tokenizer.fingerprint, where=where)
    catalog = EntityCatalog.load(checkpoint_dir / CATALOG_FILENAME)
    check_compatible(meta, catalog_hash=catalog.hash, where=where)
    prompts = load_prompts(checkpoint_dir / PROMPTS_DIRNAME)
    dtype = TORCH_DTYPES[config.model.torch_dtype]
    if meta.lora:
        base = base_model or meta.base_model
        if base is None:
            raise ValueError(
                f"{where}: a LoRA checkpoint without a recorded base model; pass base_model"
            )
        model = load_glm_checkpoint(base, torch_dtype=dtype)
        check_compatible(meta, base_model_fingerprint=model_fingerprint(model), where=where)
        model = PeftModel.from_pretrained(model, checkpoint_dir).merge_and_unload()
    else:
        model = load_glm_checkpoint(checkpoint_dir, torch_dtype=dtype)
    model = model.to(device or "cpu").eval()
    return model, tokenizer, catalog, prompts, meta, config
