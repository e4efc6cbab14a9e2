"""Builders that turn config sections into plain objects: data, tokenizer, model, checkpoints.

Configs never reach into components: these functions read a config section and call each
component with plain keyword arguments. Training (:mod:`recsysllm.training`), evaluation
and the downstream API share them, so they all rebuild the same data split and load
checkpoints the same way.

Stable entry points (used by evaluation and the API):

- :func:`prepare_data` -> :class:`PreparedData` (tables, splits, catalog, prompts, tasks);
  :func:`cap_item_names` then names the items as ``data.item_name_max_tokens`` says, with
  the tokenizer
- :func:`load_checkpoint_for_inference` -> (model, tokenizer, catalog, prompts, meta, config)
  (:mod:`recsysllm.checkpoints`)
- :func:`load_base_model_for_inference` -> (model, tokenizer): a pretrained base model
  with no training (zero-shot evaluation)

The checkpoint format (layout, writer, reader) is :mod:`recsysllm.checkpoints`;
:func:`load_checkpoint_for_inference` is re-exported here for the callers that import
it from the pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from recsysllm.checkpoint_meta import META_FILENAME, check_compatible, read_meta, verify_weights
from recsysllm.checkpoints import TOKENIZER_DIRNAME, load_checkpoint_for_inference
from recsysllm.config import DataArgs, LoraArgs, ModelArgs, TokenizerArgs
from recsysllm.data.catalog import EntityCatalog, capped_item_key_map
from recsysllm.data.sampling import SamplingConfig
from recsysllm.data.sources import load_dataset_by_name
from recsysllm.data.splits import RecSplits, build_splits
from recsysllm.data.tables import RecTables
from recsysllm.data.tasks import TaskBuilder, TaskMixture
from recsysllm.modeling.families import (
    DEFAULT_FAMILY,
    family_of_model,
    get_backbone,
    resolve_family,
)
from recsysllm.prompt_layout import AnswerBudget
from recsysllm.prompts import PromptSet, load_prompts
from recsysllm.tokenization import load_tokenizer

logger = logging.getLogger(__name__)
__all__ = [
    "BuiltModel",
    "PreparedData",
    "answer_budget",
    "apply_lora",
    "build_model",
    "build_tokenizer",
    "cap_item_names",
    "check_position_table",
    "load_base_model_for_inference",
    "load_checkpoint_for_inference",
    "prepare_data",
    "prepare_from_tables",
    "sampling_config",
    "task_mixture",
    "trainable_token_indices",
]

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


def resolve_device(requested: str | None) -> str:
    """A command line's ``--device``: as given, else ``cuda`` when a GPU is visible, else ``cpu``.

    The loaders (``load_checkpoint_for_inference``, ``Recommender.from_checkpoint``) keep
    transformers' ``from_pretrained`` default, the CPU; the commands put the model on the
    GPU when there is one.
    """
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


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
        target_sampling=data_args.target_sampling,
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
    tasks = _task_builder(splits, catalog, prompts, data_args)
    return PreparedData(tables=tables, splits=splits, catalog=catalog, prompts=prompts, tasks=tasks)


def _task_builder(
    splits: RecSplits, catalog: EntityCatalog, prompts: PromptSet, data_args: DataArgs
) -> TaskBuilder:
    return TaskBuilder(
        splits,
        catalog,
        prompts,
        sampling=sampling_config(data_args),
        history_budget=data_args.history_budget,
        train_num_negatives=data_args.train_num_negatives,
    )


def check_position_table(model_config: Any, max_length: int) -> None:
    """Refuses a ``data.max_length`` longer than a GLM's learned position tables.

    GLM embeds positions by table lookup (``max_sequence_length`` + 1 rows), so a longer
    example would fail deep in the forward pass as an index error; rotary families
    (no such attribute) have no hard limit.
    """
    limit = getattr(model_config, "max_sequence_length", None)
    if limit is not None and max_length > limit:
        raise ValueError(
            f"data.max_length is {max_length} but the model's position tables hold "
            f"{limit} positions (max_sequence_length): raise "
            "model.from_scratch.max_sequence_length for a model trained from scratch, "
            "or lower data.max_length (a pretrained GLM's tables cannot grow)"
        )


def cap_item_names(data: PreparedData, data_args: DataArgs, tokenizer: Any) -> PreparedData:
    """``data`` with every item named by at most ``data_args.item_name_max_tokens`` tokens.

    The names (:func:`recsysllm.data.catalog.capped_item_key_map`, counted with
    ``tokenizer.encode_entity``) replace the item keys in the splits, the stored
    candidates, the catalog (so the entity trie, the answer budget and ``catalog.json``)
    and the task builder (so prompts and training targets). Training calls it once the
    tokenizer exists (a from-scratch tokenizer is trained on the full titles first), and
    evaluation on the data it rebuilds with the checkpoint's tokenizer, so both see the
    same names; the catalog hash recorded in the checkpoint checks that they do.
    Without a cap (null) ``data`` is returned as it is.
    """
    max_tokens = data_args.item_name_max_tokens
    if max_tokens is None:
        return data
    item_keys = capped_item_key_map(
        data.splits.tables.items,
        lambda name: len(tokenizer.encode_entity(name)),
        max_tokens,
        disambiguation=data_args.item_name_disambiguation,
        source=data.splits.tables.name,
    )
    splits = data.splits.with_item_keys(item_keys)
    catalog = EntityCatalog.from_tables(splits.tables, item_keys=splits.item_keys)
    tasks = _task_builder(splits, catalog, data.prompts, data_args)
    return replace(data, splits=splits, catalog=catalog, tasks=tasks)


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
    family: str | None = None,
) -> Any:
    """Load or train the tokenizer.

    - ``tokenizer_args.path``: that directory.
    - ``tokenizer_args.sentencepiece_vocab_size``: a tokenizer of the family (``family``,
      default: the default family) trained on the catalog's entity names and the texts
      of epoch 0's training examples, saved under ``output_dir/tokenizer``. If that
      directory exists (a resumed run) it is reused: the checkpoint's tokenizer
      fingerprint then guards against a changed data set.
    - otherwise: the base model's directory (``base_model``).

    Each directory is read by the family that owns its layout
    (:func:`recsysllm.tokenization.load_tokenizer`).
    """
    if tokenizer_args.path is not None:
        return load_tokenizer(tokenizer_args.path)
    if tokenizer_args.sentencepiece_vocab_size is None:
        if base_model is None:
            raise ValueError("config field tokenizer.path: needed when model.base_model is null")
        return load_tokenizer(base_model)
    target = Path(output_dir) / TOKENIZER_DIRNAME
    if target.exists():
        logger.info("reusing the trained tokenizer in %s", target)
        # Only a complete save_pretrained directory: a half-written one is refused.
        return load_tokenizer(target, saved=True)
    texts = list(data.catalog.entities().values())
    examples = data.tasks.training_examples(mixture or TaskMixture(), seed=seed, epoch=0)
    texts += [_segment_text(e) for e in examples[:_SENTENCEPIECE_TRAINING_TEXTS]]
    texts += [t.text for task in data.prompts.families for t in data.prompts.templates(task)]
    family = get_backbone(family or DEFAULT_FAMILY)
    return family.train_tokenizer(texts, target, tokenizer_args.sentencepiece_vocab_size)


@dataclass
class BuiltModel:
    """The model to train and the fingerprint of its base weights (taken before LoRA).

    Attributes:
        model: the model (PEFT-wrapped with LoRA), in train mode.
        base_model_fingerprint: the family's fingerprint of the base weights, before any
            embedding resize or LoRA.
        added_token_ids: token rows the tokenizer added (special roles without a
            reserved token); they train beside LoRA and are saved in the adapter.
    """

    model: torch.nn.Module
    base_model_fingerprint: str
    added_token_ids: list[int] = field(default_factory=list)


def build_model(
    model_args: ModelArgs, lora_args: LoraArgs, tokenizer: Any, seed: int = 0
) -> BuiltModel:
    """Load or build the backbone and wrap it with LoRA.

    - ``model_args.base_model``: the checkpoint via its family's loader (``model.family``,
      else detected from the directory, :mod:`recsysllm.modeling.families`).
    - ``model_args.from_scratch``: a random model of the family (seeded by ``seed``) with
      ``vocab_size`` = the tokenizer's size rounded up to a multiple of 64.
    - The family's ``prepare_embeddings`` gives every tokenizer id a row (resizing the
      embedding for role tokens the tokenizer added) and names the added rows.
    - ``lora_args.enabled``: PEFT LoRA on ``target_modules`` (null: the family's defaults;
      only adapters, the family's ``modules_to_save`` and the added token rows train), or
      the adapter in ``lora_args.init_adapter`` loaded as trainable; its recorded
      base-model fingerprint must match.

    Returns:
        :class:`BuiltModel` with the model in train mode.
    """
    dtype = TORCH_DTYPES[model_args.torch_dtype]
    if model_args.base_model is not None:
        family = get_backbone(resolve_family(model_args.family, model_args.base_model))
        model = family.load_checkpoint(model_args.base_model, torch_dtype=dtype)
        where = model_args.base_model
    else:
        family = get_backbone(model_args.family or DEFAULT_FAMILY)
        # Rounded to a multiple of 64: tensor-core friendly, like THUDM's padding to 128.
        vocab_size = -(-tokenizer.vocab_size // 64) * 64
        torch.manual_seed(seed)
        model = family.build_from_scratch(model_args.from_scratch, vocab_size, dtype)
        where = "model.from_scratch"
    # A runtime choice, not architecture: the fingerprint does not depend on it.
    family.set_attention_implementation(model, model_args.attention_implementation)
    fingerprint = family.fingerprint(model)
    added = family.prepare_embeddings(model, tokenizer, where=where)
    if lora_args.enabled:
        model = apply_lora(model, lora_args, fingerprint, added)
    model.train()
    return BuiltModel(model=model, base_model_fingerprint=fingerprint, added_token_ids=added)


def load_base_model_for_inference(
    model_args: ModelArgs,
    tokenizer_args: TokenizerArgs,
    device: str | torch.device | None = None,
) -> tuple[torch.nn.Module, Any]:
    """The pretrained ``model_args.base_model`` as it is, untrained, for zero-shot evaluation.

    The model is loaded by its family's loader (no LoRA, no adapter) and its tokenizer is
    ``tokenizer_args.path``, else the base model's own. Role tokens the tokenizer has to
    add get embedding rows as in training (the family's ``prepare_embeddings``); untrained,
    they mean nothing to the model.

    Raises:
        ValueError: no ``model.base_model`` (a model trained from scratch has nothing to
            evaluate before training), or a tokenizer to be trained
            (``tokenizer.sentencepiece_vocab_size``).

    Returns:
        ``(model, tokenizer)``; the model is in eval mode on ``device`` (default: CPU).
    """
    if model_args.base_model is None:
        raise ValueError(
            "config field model.base_model: evaluating an untrained model needs a pretrained "
            "base model directory"
        )
    if tokenizer_args.sentencepiece_vocab_size is not None:
        raise ValueError(
            "config field tokenizer.sentencepiece_vocab_size: a tokenizer trained on the data "
            "exists only in a checkpoint; an untrained base model uses its own tokenizer"
        )
    tokenizer = load_tokenizer(tokenizer_args.path or model_args.base_model)
    family = get_backbone(resolve_family(model_args.family, model_args.base_model))
    model = family.load_checkpoint(
        model_args.base_model, torch_dtype=TORCH_DTYPES[model_args.torch_dtype]
    )
    family.prepare_embeddings(model, tokenizer, where=model_args.base_model)
    return model.to(device or "cpu").eval(), tokenizer


def apply_lora(
    model: torch.nn.Module,
    lora_args: LoraArgs,
    base_model_fingerprint: str,
    added_token_ids: Sequence[int] = (),
) -> torch.nn.Module:
    """Freeze ``model`` and add trainable LoRA adapters (new, or ``lora_args.init_adapter``).

    Besides the adapters, the family's ``modules_to_save`` train fully and the rows of
    ``added_token_ids`` train through PEFT's ``trainable_token_indices`` (only those rows
    of the embedding, and of an untied output head, are stored in the adapter).
    """
    if lora_args.init_adapter is not None:
        adapter_dir = Path(lora_args.init_adapter)
        if (adapter_dir / META_FILENAME).is_file():
            adapter_meta = read_meta(adapter_dir)
            check_compatible(
                adapter_meta,
                base_model_fingerprint=base_model_fingerprint,
                where=str(adapter_dir),
            )
            verify_weights(adapter_dir, adapter_meta)
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    family = get_backbone(family_of_model(model))
    lora_config = LoraConfig(
        r=lora_args.r,
        lora_alpha=lora_args.alpha,
        lora_dropout=lora_args.dropout,
        target_modules=list(lora_args.target_modules or family.lora_targets(model)),
        bias="none",
        # decoders: the block-position embedding trains beside LoRA and is saved with it
        modules_to_save=family.modules_to_save(model) or None,
        trainable_token_indices=trainable_token_indices(model, added_token_ids),
    )
    return get_peft_model(model, lora_config)


def trainable_token_indices(
    model: torch.nn.Module, token_ids: Sequence[int]
) -> dict[str, list[int]] | None:
    """PEFT's ``trainable_token_indices`` for ``token_ids``: the input embedding's rows, and
    the output head's when it is not tied to the embedding (an added [eop] is predicted)."""
    if not token_ids:
        return None
    names = {id(module): name for name, module in model.named_modules()}
    layers = [model.get_input_embeddings()]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not layers[0].weight:
        layers.append(head)
    return {names[id(layer)]: list(token_ids) for layer in layers}
