"""Typed configuration: one dataclass per concern, YAML in, ``key=value`` overrides on top.

A recipe is one YAML file whose top-level keys are the sections of :class:`Config`::

    model:   {base_model: /ckpt/glm-10b, torch_dtype: bfloat16}
    lora:    {enabled: true, r: 8}
    data:    {source: movielens-100k, path: data/ml-100k}
    train:   {output_dir: runs/glm10b, learning_rate: 1.0e-5, epochs: 8}

Overrides use dotted keys (``train.learning_rate=1e-4``) and two shorthands that work for
every config (``output_dir=DIR``, ``max_steps=N``); values are parsed with
``yaml.safe_load``, so ``lora.enabled=false`` and ``eval.top_k=[1,10]`` do what they say.

Example:
    >>> config = load_config("configs/tiny_ml100k.yaml", ["max_steps=10"])
    >>> config.train.max_steps
    10
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recsysllm.files import atomic_write, load_yaml, read_yaml
from recsysllm.schema import (
    ITEM_NAME_DISAMBIGUATIONS,
    PRETRAIN_TASK,
    TARGET_SAMPLING,
    TASK_FAMILIES,
)

TORCH_DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLEMENTATIONS = ("sdpa", "flex")
PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")
PROMPT_SETS = ("seen", "unseen", "all")
# Shorthand override keys that work for every config.
SHORTHANDS = {"output_dir": "train.output_dir", "max_steps": "train.max_steps"}


def help_field(text: str, **kwargs: Any) -> Any:
    """A dataclass field carrying its one-line help string in ``metadata["help"]``."""
    return field(metadata={"help": text}, **kwargs)


def _check(condition: bool, section: str, name: str, message: str) -> None:
    if not condition:
        raise ValueError(f"config field {section}.{name}: {message}")


def _check_finite(args: Any, section: str) -> None:
    """Every float of a config section (and of its dict fields) is finite: no inf, no nan."""
    for item in dataclasses.fields(args):
        value = getattr(args, item.name)
        entries = value.items() if isinstance(value, dict) else [(None, value)]
        for key, entry in entries:
            if isinstance(entry, float) and not math.isfinite(entry):
                name = item.name if key is None else f"{item.name}.{key}"
                raise ValueError(
                    f"config field {section}.{name}: must be a finite number, got {entry}"
                )


def _families() -> Any:
    """:mod:`recsysllm.modeling.families`, imported when a config names model fields."""
    from recsysllm.modeling import families  # not light: imports the model code

    return families


@dataclass
class ModelArgs:
    """Which backbone to start from (``recsysllm.modeling.families``)."""

    base_model: str | None = help_field(
        "directory of a pretrained checkpoint of the model family; null to build from scratch",
        default=None,
    )
    from_scratch: dict[str, Any] | None = help_field(
        "config fields of a randomly initialised model of the family (vocab_size is taken "
        "from the tokenizer)",
        default=None,
    )
    torch_dtype: str = help_field(
        "dtype the weights are loaded in: " + "|".join(TORCH_DTYPES), default="float32"
    )
    attention_implementation: str = help_field(
        "training attention kernel: sdpa | flex (FlexAttention with a block mask of the "
        "packed rows; CUDA only, no attention dropout)",
        default="sdpa",
    )
    family: str | None = help_field(
        "backbone family, a key of recsysllm.modeling.families.FAMILIES; null: detected "
        "from base_model's config.json (the default family without one)",
        default=None,
    )

    def __post_init__(self) -> None:
        _check_finite(self, "model")
        if self.family is not None:
            names = _families().FAMILIES
            _check(
                self.family in names,
                "model",
                "family",
                f"{self.family!r} not in {' | '.join(names)} | null",
            )
        for key, value in (self.from_scratch or {}).items():
            families = _families()
            family = families.get_backbone(self.family or families.DEFAULT_FAMILY)
            known = family.from_scratch_fields()
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.0)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise KeyError(f"unknown config key 'model.from_scratch.{key}'{hint}")
            if isinstance(value, int) and not isinstance(value, bool):
                _check(value > 0, "model", f"from_scratch.{key}", f"must be > 0, got {value}")
            if isinstance(value, float):
                _check(value >= 0, "model", f"from_scratch.{key}", f"must be >= 0, got {value}")
        _check(
            (self.base_model is None) != (self.from_scratch is None),
            "model",
            "base_model",
            "set exactly one of model.base_model and model.from_scratch",
        )
        _check(
            self.torch_dtype in TORCH_DTYPES,
            "model",
            "torch_dtype",
            f"{self.torch_dtype!r} not in {TORCH_DTYPES}",
        )
        _check(
            self.attention_implementation in ATTENTION_IMPLEMENTATIONS,
            "model",
            "attention_implementation",
            f"{self.attention_implementation!r} not in {ATTENTION_IMPLEMENTATIONS}",
        )


@dataclass
class TokenizerArgs:
    """Which tokenizer: a saved one, the base model's own, or one trained on the data."""

    path: str | None = help_field(
        "tokenizer directory; null: the base model's directory (or train one, see sentencepiece_vocab_size)",
        default=None,
    )
    sentencepiece_vocab_size: int | None = help_field(
        "train a sentencepiece tokenizer with this vocabulary size on the training data (from-scratch models)",
        default=None,
    )

    def __post_init__(self) -> None:
        _check_finite(self, "tokenizer")
        _check(
            self.path is None or self.sentencepiece_vocab_size is None,
            "tokenizer",
            "path",
            "set at most one of tokenizer.path and tokenizer.sentencepiece_vocab_size",
        )
        _check(
            self.sentencepiece_vocab_size is None or self.sentencepiece_vocab_size >= 100,
            "tokenizer",
            "sentencepiece_vocab_size",
            "must be >= 100 (room for the special tokens)",
        )


@dataclass
class LoraArgs:
    """LoRA adapters (PEFT) on the backbone's linear layers."""

    enabled: bool = help_field("train LoRA adapters; false trains all parameters", default=True)
    r: int = help_field("LoRA rank", default=8)
    alpha: int = help_field("LoRA alpha (scaling = alpha / r)", default=16)
    dropout: float = help_field("dropout on the LoRA input", default=0.05)
    target_modules: list[str] | None = help_field(
        "module names that receive adapters; null: the backbone family's defaults", default=None
    )
    init_adapter: str | None = help_field(
        "directory of a saved adapter to continue training from (loaded as trainable)", default=None
    )

    def __post_init__(self) -> None:
        _check_finite(self, "lora")
        _check(self.r > 0, "lora", "r", f"must be > 0, got {self.r}")
        _check(self.alpha > 0, "lora", "alpha", f"must be > 0, got {self.alpha}")
        _check(
            0.0 <= self.dropout < 1.0, "lora", "dropout", f"must be in [0, 1), got {self.dropout}"
        )
        _check(
            self.target_modules is None or bool(self.target_modules),
            "lora",
            "target_modules",
            "must not be empty (null: the family's defaults)",
        )
        _check(
            self.enabled or self.init_adapter is None,
            "lora",
            "init_adapter",
            "needs lora.enabled: true",
        )


@dataclass
class DataArgs:
    """Data set, task mixture, behaviour sampling and sequence packing."""

    source: str = help_field(
        "data set name understood by recsysllm.data.sources", default="movielens-100k"
    )
    path: str = help_field(
        "data directory or file (source 'generic': the YAML column mapping)", default="data/ml-100k"
    )
    category: str | None = help_field(
        "Amazon category (Beauty, Sports, Toys, ...) when path is a directory", default=None
    )
    k_core: int = help_field("drop users and items with fewer interactions (iterated)", default=5)
    num_negatives: int = help_field(
        "negatives per stored direct candidate list (99: 1-of-100); on a catalog too small for "
        "that, every list gets as many as all users can fill (recorded in the split notes); "
        "no lists are built when data.mixture.direct is 0",
        default=99,
    )
    exact_negatives: bool = help_field(
        "refuse a catalog too small for num_negatives instead of using fewer", default=False
    )
    max_length: int = help_field(
        "tokens per training sequence, [CLS] and [eos] included", default=1024
    )
    packing: bool = help_field(
        "merge a batch's examples into fewer rows (block-diagonal attention); "
        "per_device_batch_size then counts examples, not rows",
        default=True,
    )
    packing_window: int = help_field(
        "with packing: examples planned together into full rows before batching "
        "(recsysllm.packing; per_device_batch_size then counts rows of max_length tokens; "
        "every example is tokenized once more up front to plan); "
        "0: pack within each batch of per_device_batch_size examples",
        default=2000,
    )
    packing_row_length: int | None = help_field(
        "with packing_window > 0: tokens per packed row; shorter than max_length, short "
        "examples share short rows (attention costs the square of a row's width) and an "
        "example longer than a row gets one of its own (up to max_length); null: max_length",
        default=None,
    )
    mixture: dict[str, float] = help_field(
        "sampling weight of each task family and of 'pretrain' (plain behaviour documents)",
        default_factory=lambda: dict.fromkeys((*TASK_FAMILIES, PRETRAIN_TASK), 1.0),
    )
    train_templates: list[str] | None = help_field(
        "seen template ids the training mixture draws from (e.g. only the variants that are "
        "evaluated); null: every seen template of each family with weight > 0",
        default=None,
    )
    target_sampling: str = help_field(
        "how a training example's target event is drawn: events (uniformly over the train "
        "events: a user weighs as many events as they have) | users (a user uniformly, then "
        "one of their events: users weigh equally, as in the evaluation) | users_recent (a user "
        "uniformly, then the later of two of their events drawn uniformly: the i-th of n "
        "with probability (2i + 1) / n^2, so recent behaviour, which leave-one-out "
        "evaluation tests, weighs more)",
        default="events",
    )
    examples_per_epoch: int | None = help_field(
        "examples drawn from the mixture per epoch; null: one per (user, family) as the builder defines",
        default=None,
    )
    short_ratio: float = help_field(
        "share of the history budget from the short-term window", default=0.6
    )
    medium_ratio: float = help_field(
        "share of the history budget from the medium-term window", default=0.3
    )
    long_ratio: float = help_field(
        "share of the history budget from the long-term window", default=0.1
    )
    short_window_days: float = help_field("short-term window length in days", default=7.0)
    medium_window_days: float = help_field(
        "medium-term window end in days before the target", default=90.0
    )
    short_fraction: float = help_field(
        "short-term share of the history when timestamps are missing", default=0.2
    )
    medium_fraction: float = help_field(
        "medium-term share of the history when timestamps are missing", default=0.4
    )
    history_budget: int = help_field(
        "most history items one prompt shows (N of the 60/30/10 sampling)", default=20
    )
    train_num_negatives: int | list[int] | None = help_field(
        "negatives of the candidate lists of TRAINING examples (null: as many as the stored "
        "valid/test lists, data.num_negatives); a list draws each example's count from it "
        "uniformly (repeat a value to weight it); evaluation lists are never changed",
        default=None,
    )
    answer_text_tokens: int = help_field(
        "answer tokens prompts reserve for free-text answers (longer gold texts are cut in "
        "training); item answers reserve the longest item, ratings and yes/no 8",
        default=64,
    )
    item_name_max_tokens: int | None = help_field(
        "cap every item's name (prompts, training targets, the entity trie, outputs) at this "
        "many tokens of the model's tokenizer: longer titles keep their longest whole-word "
        "prefix that fits, names that then coincide are told apart as "
        "data.item_name_disambiguation says; null: full titles. Default 16 "
        "(benchmarks/RESULTS.md, issue 12, picked on valid: +.17 HR@10 over full titles on "
        "a generated long-title catalog, level on MovieLens-100K, no name that long in the "
        "clothing reviews; unmeasured with pretrained backbones)",
        default=16,
    )
    item_name_disambiguation: str = help_field(
        "how a cap tells apart items whose cut names coincide: 'number' (' #1', ' #2', ...) "
        "or 'words' (the group's shared words, at most half the cap, then each title's own "
        "words after them; numbers only where those coincide too; benchmarks/RESULTS.md, "
        "issue 12: level or better on valid, and readable)",
        default="words",
    )
    mask_prob: float = help_field(
        "collator: probability of entity-level [MASK] spans for pretrain documents", default=0.5
    )
    smask_prob: float = help_field(
        "collator: probability of sentence-level [sMASK] for pretrain documents", default=0.25
    )
    gmask_prob: float = help_field(
        "collator: probability of document-level [gMASK] for pretrain documents (0 for glm-large)",
        default=0.25,
    )
    position_offsets: bool = help_field(
        "collator: start each training example's inter positions at a random offset "
        "(uniform over 0..max_length - its Part A, per example and epoch), so every learned "
        "position is trained even when training prompts are shorter than evaluation ones "
        "(1-of-100 lists at evaluation, shorter lists in training); evaluation starts at 0",
        default=False,
    )
    prompts_dir: str | None = help_field(
        "directory of the prompt YAMLs (one per task family); null: the repository's prompts/",
        default=None,
    )
    seed: int = help_field(
        "seed of the training examples (epoch mixtures, sampled histories, training "
        "candidate lists) and, unless split_seed is set, of the split and evaluation data",
        default=42,
    )
    split_seed: int | None = help_field(
        "seed of the split and the evaluation data: short users' split, the stored "
        "valid/test candidate lists, evaluation examples' candidate order, the evaluated user "
        "sample and SASRec; null: data.seed. Fix it to compare training seeds on identical "
        "evaluation lists",
        default=None,
    )

    @property
    def evaluation_seed(self) -> int:
        """``split_seed``, else ``seed``: what the split and the evaluation data are drawn with."""
        return self.seed if self.split_seed is None else self.split_seed

    def __post_init__(self) -> None:
        _check_finite(self, "data")
        _check(self.k_core >= 1, "data", "k_core", f"must be >= 1, got {self.k_core}")
        _check(
            self.num_negatives >= 1,
            "data",
            "num_negatives",
            f"must be >= 1, got {self.num_negatives}",
        )
        _check(
            self.history_budget >= 1,
            "data",
            "history_budget",
            f"must be >= 1, got {self.history_budget}",
        )
        negatives = self.train_num_negatives
        counts = negatives if isinstance(negatives, list) else [negatives]
        _check(
            negatives is None or (bool(counts) and min(counts) >= 1),
            "data",
            "train_num_negatives",
            f"must be >= 1 or a non-empty list of such (null: as the evaluation lists), "
            f"got {negatives}",
        )
        _check(self.max_length >= 16, "data", "max_length", f"must be >= 16, got {self.max_length}")
        _check(self.answer_text_tokens >= 1, "data", "answer_text_tokens", "must be >= 1")
        _check(
            self.item_name_max_tokens is None or self.item_name_max_tokens >= 4,
            "data",
            "item_name_max_tokens",
            f"must be null or >= 4 (a word and a ' #N' suffix), got {self.item_name_max_tokens}",
        )
        _check(
            self.item_name_disambiguation in ITEM_NAME_DISAMBIGUATIONS,
            "data",
            "item_name_disambiguation",
            f"must be one of {', '.join(ITEM_NAME_DISAMBIGUATIONS)}, got {self.item_name_disambiguation!r}",
        )
        _check(
            self.packing_window >= 0,
            "data",
            "packing_window",
            f"must be >= 0, got {self.packing_window}",
        )
        _check(
            self.packing_row_length is None or self.packing_row_length >= 1,
            "data",
            "packing_row_length",
            f"must be null or >= 1, got {self.packing_row_length}",
        )
        known = (*TASK_FAMILIES, PRETRAIN_TASK)
        for name, weight in self.mixture.items():
            _check(
                name in known, "data", "mixture", f"unknown family {name!r}; known: {list(known)}"
            )
            _check(weight >= 0, "data", "mixture", f"weight of {name!r} must be >= 0, got {weight}")
        _check(sum(self.mixture.values()) > 0, "data", "mixture", "all weights are zero")
        _check(
            self.train_templates is None or len(self.train_templates) > 0,
            "data",
            "train_templates",
            "must be null (every seen template) or a non-empty list of template ids",
        )
        _check(
            self.target_sampling in TARGET_SAMPLING,
            "data",
            "target_sampling",
            f"{self.target_sampling!r} not in {TARGET_SAMPLING}",
        )
        for name in ("short_ratio", "medium_ratio", "long_ratio"):
            _check(
                getattr(self, name) >= 0, "data", name, f"must be >= 0, got {getattr(self, name)}"
            )
        ratios = self.short_ratio + self.medium_ratio + self.long_ratio
        _check(
            abs(ratios - 1.0) < 1e-6,
            "data",
            "short_ratio",
            f"short+medium+long ratios sum to {ratios}, not 1",
        )
        for name in ("short_fraction", "medium_fraction"):
            _check(0 <= getattr(self, name) <= 1, "data", name, "must be in [0, 1]")
        _check(
            self.short_fraction + self.medium_fraction <= 1,
            "data",
            "medium_fraction",
            "short_fraction + medium_fraction must be <= 1",
        )
        _check(
            self.short_window_days > 0,
            "data",
            "short_window_days",
            f"must be > 0, got {self.short_window_days}",
        )
        _check(
            self.medium_window_days > self.short_window_days,
            "data",
            "medium_window_days",
            f"must be > short_window_days ({self.short_window_days}), got {self.medium_window_days}",
        )
        for name in ("mask_prob", "smask_prob", "gmask_prob"):
            _check(getattr(self, name) >= 0, "data", name, "must be >= 0")
        total = self.mask_prob + self.smask_prob + self.gmask_prob
        _check(total > 0, "data", "mask_prob", "mask_prob + smask_prob + gmask_prob must be > 0")
        _check(
            self.examples_per_epoch is None or self.examples_per_epoch > 0,
            "data",
            "examples_per_epoch",
            "must be > 0",
        )


# Item rankings whose scores may be renormalised over the allowed answers
# (eval.renormalize, recsysllm.inference.Inference), and the item answers whose
# training loss is restricted the same way (train.renormalize, recsysllm.item_loss).
RENORMALIZE_VARIANTS = ("all_items", "candidates")
# Task families whose item answers are ranked (all items or 1-of-N candidates).
RANKING_FAMILIES = ("sequential", "direct")
# Default weights of the guided LM + SASRec fusion search (eval.fusion_grid); w 0 reuses
# the model's own answers. The better the LM, the lower the best w (MovieLens-100K valid:
# .8 for an LM at HR@10 .131, .6 for one at .159; benchmarks/RESULTS.md, tenth round),
# so the grid reaches below .5 for pretrained backbones stronger than those.
FUSION_GRID = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


@dataclass
class TrainArgs:
    """Optimisation, precision, checkpointing and launch settings."""

    output_dir: str = help_field(
        "directory receiving checkpoint-N/ subdirectories", default="runs/default"
    )
    learning_rate: float = help_field("peak learning rate (AdamW)", default=1e-5)
    warmup_ratio: float = help_field(
        "warmup as a share of all steps (ignored when warmup_steps > 0)", default=0.0
    )
    warmup_steps: int = help_field("warmup steps", default=0)
    lr_schedule: str = help_field(
        "learning-rate schedule after warmup: " + "|".join(LR_SCHEDULES), default="linear"
    )
    epochs: int = help_field(
        "passes over the epoch mixtures (each epoch draws its own mixture)", default=1
    )
    max_steps: int = help_field("optimizer steps; > 0 overrides epochs", default=-1)
    max_seconds: float | None = help_field(
        "time budget of the optimizer steps in seconds (data preparation and saving not "
        "counted): training stops at the first step boundary past it, or at the end of the "
        "epochs/max_steps if sooner, and lr_schedule decays over the budget (its progress "
        "is the larger of elapsed/max_seconds and step/steps); the steps run then depend on "
        "the machine (the checkpoint records them: pass them as max_steps for a run of the "
        "same length on any machine); null: no budget",
        default=None,
    )
    per_device_batch_size: int = help_field(
        "examples per device and micro-step (with packing they share fewer rows); "
        "rows of data.max_length tokens when data.packing_window > 0",
        default=8,
    )
    gradient_accumulation_steps: int = help_field("micro-steps per optimizer step", default=1)
    max_grad_norm: float = help_field("gradient clipping norm (0 disables)", default=1.0)
    weight_decay: float = help_field("AdamW weight decay", default=0.0)
    adam_beta1: float = help_field("AdamW beta1", default=0.9)
    adam_beta2: float = help_field("AdamW beta2", default=0.999)
    adam_epsilon: float = help_field("AdamW epsilon", default=1e-8)
    precision: str = help_field("mixed precision: " + "|".join(PRECISIONS), default="fp32")
    gradient_checkpointing: bool = help_field(
        "recompute activations in the backward pass", default=False
    )
    gradient_checkpointing_every: int = help_field(
        "with gradient_checkpointing: checkpoint blocks 0, k, 2k, ... only (1: every block); "
        "larger k recomputes less and keeps more activations",
        default=1,
    )
    renormalize: list[str] = help_field(
        "train item answers with each token's softmax restricted to the tokens the item "
        "trie allows after its prefix, as eval.renormalize scores them (recsysllm.item_loss): "
        "all_items (next-item answers, over the catalog) and/or candidates (1-of-N answers, "
        "over the prompt's list); evaluate with the same eval.renormalize variants, which "
        "score that distribution; [] (default): the full-softmax loss everywhere",
        default_factory=list,
    )
    compile_blocks: bool = help_field(
        "torch.compile each transformer block (benchmarks/RESULTS.md says where it pays)",
        default=False,
    )
    save_steps: int = help_field(
        "save a checkpoint every N optimizer steps (and at the end)", default=500
    )
    save_total_limit: int | None = help_field(
        "keep at most this many checkpoints (null: all)", default=None
    )
    eval_steps: int | None = help_field("validation loss every N steps (null: never)", default=None)
    eval_ranking_users: int | None = help_field(
        "at every evaluation, also rank the valid examples of a seeded sample of N users "
        "(the trained sequential/direct families' seen templates, scored as recsysllm "
        "evaluate scores them: constrained search, eval.num_beams, eval.top_k, "
        "eval.exclude_history, eval.renormalize) and log eval_hr@k and eval_ndcg@k (null: "
        "the validation loss only)",
        default=200,
    )
    metric_for_best_model: str = help_field(
        "what load_best_model_at_end and early_stopping_patience follow: ndcg@K or hr@K "
        "(K in eval.top_k; higher is better; needs eval_ranking_users) or loss (lower is "
        "better; on MovieLens-100K the valid loss is lowest long before the ranking is best: "
        "benchmarks/RESULTS.md)",
        default="ndcg@10",
    )
    load_best_model_at_end: bool = help_field(
        "after training, load the saved checkpoint that is best by metric_for_best_model on "
        "the valid split and write it as final (needs eval_steps, and save_steps a multiple "
        "of it); the best checkpoint is never rotated away",
        default=False,
    )
    early_stopping_patience: int | None = help_field(
        "stop once metric_for_best_model has not improved for this many evaluations in a "
        "row (needs load_best_model_at_end; null: train every step)",
        default=None,
    )
    logging_steps: int = help_field("log loss and learning rate every N steps", default=10)
    seed: int = help_field("seed of model init, dropout and the collator's masks", default=42)
    deepspeed: str | None = help_field(
        "DeepSpeed JSON config path (configs/ds/*.json); null: no DeepSpeed", default=None
    )
    resume: str | None = help_field(
        "null | latest | PATH of a checkpoint-N directory", default=None
    )
    dataloader_workers: int = help_field("DataLoader worker processes", default=0)
    use_cpu: bool = help_field("train on CPU even when a GPU is visible", default=False)

    def __post_init__(self) -> None:
        _check_finite(self, "train")
        _check(
            self.learning_rate > 0,
            "train",
            "learning_rate",
            f"must be > 0, got {self.learning_rate}",
        )
        _check(0.0 <= self.warmup_ratio < 1.0, "train", "warmup_ratio", "must be in [0, 1)")
        _check(self.warmup_steps >= 0, "train", "warmup_steps", "must be >= 0")
        _check(
            self.lr_schedule in LR_SCHEDULES,
            "train",
            "lr_schedule",
            f"{self.lr_schedule!r} not in {LR_SCHEDULES}",
        )
        _check(self.epochs >= 1, "train", "epochs", "must be >= 1")
        _check(
            self.max_steps == -1 or self.max_steps > 0, "train", "max_steps", "must be -1 or > 0"
        )
        _check(
            self.max_seconds is None or self.max_seconds > 0,
            "train",
            "max_seconds",
            f"must be > 0 (null: no budget), got {self.max_seconds}",
        )
        _check(
            self.max_seconds is None or self.resume is None,
            "train",
            "max_seconds",
            "cannot be combined with train.resume (the schedule follows wall time, which a "
            "resumed run cannot restore); resume with max_steps instead",
        )
        _check(self.per_device_batch_size >= 1, "train", "per_device_batch_size", "must be >= 1")
        _check(
            self.gradient_accumulation_steps >= 1,
            "train",
            "gradient_accumulation_steps",
            "must be >= 1",
        )
        _check(
            self.precision in PRECISIONS,
            "train",
            "precision",
            f"{self.precision!r} not in {PRECISIONS}",
        )
        _check(self.max_grad_norm >= 0, "train", "max_grad_norm", "must be >= 0 (0 disables)")
        _check(self.weight_decay >= 0, "train", "weight_decay", "must be >= 0")
        for name in ("adam_beta1", "adam_beta2"):
            _check(0 <= getattr(self, name) < 1, "train", name, "must be in [0, 1)")
        _check(self.adam_epsilon > 0, "train", "adam_epsilon", "must be > 0")
        _check(
            self.eval_steps is None or self.eval_steps >= 1,
            "train",
            "eval_steps",
            "must be >= 1 (null: never)",
        )
        _check(
            not self.load_best_model_at_end or self.eval_steps is not None,
            "train",
            "load_best_model_at_end",
            "needs train.eval_steps (the validation loss picks the best checkpoint)",
        )
        _check(
            not self.load_best_model_at_end
            or self.eval_steps is None
            or self.save_steps % self.eval_steps == 0,
            "train",
            "save_steps",
            f"must be a multiple of train.eval_steps ({self.eval_steps}) with "
            f"load_best_model_at_end, so every checkpoint has a validation loss; "
            f"got {self.save_steps}",
        )
        _check(
            self.eval_ranking_users is None or self.eval_ranking_users >= 1,
            "train",
            "eval_ranking_users",
            f"must be >= 1 (null: the validation loss only), got {self.eval_ranking_users}",
        )
        _check(
            self.metric_for_best_model == "loss"
            or re.fullmatch(r"(hr|ndcg)@[1-9][0-9]*", self.metric_for_best_model) is not None,
            "train",
            "metric_for_best_model",
            f"expected loss, hr@K or ndcg@K, got {self.metric_for_best_model!r}",
        )
        _check(
            not self.load_best_model_at_end
            or self.metric_for_best_model == "loss"
            or self.eval_ranking_users is not None,
            "train",
            "metric_for_best_model",
            f"{self.metric_for_best_model} needs train.eval_ranking_users (or use loss)",
        )
        _check(
            self.early_stopping_patience is None or self.early_stopping_patience >= 1,
            "train",
            "early_stopping_patience",
            f"must be >= 1 (null: no early stopping), got {self.early_stopping_patience}",
        )
        _check(
            self.early_stopping_patience is None or self.load_best_model_at_end,
            "train",
            "early_stopping_patience",
            "needs train.load_best_model_at_end: true (stopping early keeps the best "
            "checkpoint, not the last)",
        )
        _check(
            self.gradient_checkpointing_every >= 1,
            "train",
            "gradient_checkpointing_every",
            f"must be >= 1, got {self.gradient_checkpointing_every}",
        )
        _check(self.save_steps >= 1, "train", "save_steps", "must be >= 1")
        _check(
            self.save_total_limit is None or self.save_total_limit >= 1,
            "train",
            "save_total_limit",
            "must be >= 1",
        )
        _check(self.logging_steps >= 1, "train", "logging_steps", "must be >= 1")
        _check(self.dataloader_workers >= 0, "train", "dataloader_workers", "must be >= 0")
        for variant in self.renormalize:
            _check(
                variant in RENORMALIZE_VARIANTS,
                "train",
                "renormalize",
                f"unknown {variant!r}; known: {RENORMALIZE_VARIANTS}",
            )
        _check(
            self.deepspeed is None or self.deepspeed.endswith(".json"),
            "train",
            "deepspeed",
            f"expected a JSON file path, got {self.deepspeed!r}",
        )


@dataclass
class LoggingArgs:
    """Experiment tracking."""

    wandb_project: str | None = help_field(
        "wandb project (offline unless WANDB_API_KEY is set; WANDB_MODE=disabled turns it off); null: no wandb",
        default=None,
    )
    wandb_run_name: str | None = help_field(
        "wandb run name (null: the output_dir's name)", default=None
    )
    tensorboard: bool = help_field(
        "also write TensorBoard logs under output_dir/runs", default=False
    )


@dataclass
class EvalArgs:
    """Evaluation protocol (read by recsysllm.evaluation)."""

    families: list[str] = help_field(
        "task families to evaluate", default_factory=lambda: list(TASK_FAMILIES)
    )
    prompts: str = help_field("templates: " + "|".join(PROMPT_SETS), default="all")
    split: str = help_field("valid | test", default="test")
    limit: int | None = help_field(
        "evaluate a seeded random sample of N users (seed data.split_seed, else data.seed), "
        "the same users for every family, template and system (null: all users)",
        default=None,
    )
    batch_size: int = help_field("prompts per generation batch", default=16)
    num_beams: int = help_field("beams for constrained item generation", default=20)
    top_k: list[int] = help_field("cut-offs for HR@k / NDCG@k", default_factory=lambda: [1, 5, 10])
    exclude_history: bool = help_field(
        "all-item rankings of every table row exclude the user's whole training history "
        "(false: nothing excluded)",
        default=True,
    )
    sasrec: bool = help_field(
        "add a SASRec row (trained on the same splits, weights cached) to every ranking table",
        default=True,
    )
    fusion: bool = help_field(
        "add an LM + SASRec fusion row (weight chosen on the valid split); needs sasrec",
        default=True,
    )
    fusion_rescore: bool = help_field(
        "with the fusion row, also a fusion-rescore row: the model's own beam top-N rescored "
        "by the same weighted score (cheap; all-item examples only)",
        default=True,
    )
    fusion_grid: list[float] = help_field(
        "weights w in [0, 1] the guided fusion search tries on the valid split, one search "
        "of the valid examples each (dense near 1: summed over an item's tokens, LM "
        "log-probabilities spread wider than SASRec's log-softmax)",
        default_factory=lambda: list(FUSION_GRID),
    )
    pmi: bool = help_field(
        "add a prior-corrected model+pmi row: log p(item | prompt) - alpha * log p(item | "
        "user-free prompt), alpha chosen on the valid split",
        default=False,
    )
    length_norm_row: bool = help_field(
        "add a model+lennorm ablation row (log-probability per token)", default=False
    )
    renormalize: list[str] = help_field(
        "item rankings scored with each token's probability renormalised over the tokens "
        "allowed after the prefix, so scores are a distribution over the eligible answers: "
        "all_items (the item trie minus excluded items) and/or candidates (the prompt's "
        "1-of-N list); the others use the full-softmax log-likelihood",
        default_factory=lambda: ["all_items"],
    )
    sasrec_max_epochs: int | None = help_field(
        "SASRec epochs at most (null: 200, RecBole's; a capped run is a lower bound)",
        default=None,
    )
    sasrec_max_seconds: float | None = help_field(
        "stop SASRec training after the epoch that ends past this many seconds (null: no "
        "cap; a capped run is reported as a lower bound)",
        default=None,
    )
    sasrec_cache_dir: str | None = help_field(
        "directory of cached SASRec weights (null: <checkpoint>/sasrec, or beside the "
        "results when the checkpoint is not writable)",
        default=None,
    )
    valid_limit: int | None = help_field(
        "choose the fusion weight and the PMI alpha on the valid examples of a seeded "
        "sample of N of the evaluated users (null: all evaluated users)",
        default=None,
    )

    def __post_init__(self) -> None:
        _check_finite(self, "eval")
        _check(
            self.sasrec_max_epochs is None or self.sasrec_max_epochs >= 1,
            "eval",
            "sasrec_max_epochs",
            "must be >= 1 (null: no cap)",
        )
        _check(
            self.sasrec_max_seconds is None or self.sasrec_max_seconds > 0,
            "eval",
            "sasrec_max_seconds",
            "must be > 0 (null: no cap)",
        )
        _check(
            self.valid_limit is None or self.valid_limit >= 1,
            "eval",
            "valid_limit",
            "must be >= 1 (null: all evaluated users)",
        )
        _check(self.limit is None or self.limit >= 1, "eval", "limit", "must be >= 1 (null: all)")
        for family in self.families:
            _check(
                family in TASK_FAMILIES,
                "eval",
                "families",
                f"unknown family {family!r}; known: {TASK_FAMILIES}",
            )
        _check(
            self.prompts in PROMPT_SETS, "eval", "prompts", f"{self.prompts!r} not in {PROMPT_SETS}"
        )
        _check(
            self.split in ("valid", "test"),
            "eval",
            "split",
            f"{self.split!r} not in ('valid', 'test')",
        )
        _check(self.batch_size >= 1, "eval", "batch_size", "must be >= 1")
        _check(self.num_beams >= 1, "eval", "num_beams", "must be >= 1")
        _check(
            bool(self.fusion_grid) and all(0.0 <= w <= 1.0 for w in self.fusion_grid),
            "eval",
            "fusion_grid",
            f"must be a non-empty list of weights in [0, 1], got {self.fusion_grid}",
        )
        for variant in self.renormalize:
            _check(
                variant in RENORMALIZE_VARIANTS,
                "eval",
                "renormalize",
                f"unknown {variant!r}; known: {RENORMALIZE_VARIANTS}",
            )
        _check(
            bool(self.top_k) and all(k >= 1 for k in self.top_k),
            "eval",
            "top_k",
            "must be positive ints",
        )
        _check(
            self.num_beams >= max(self.top_k),
            "eval",
            "num_beams",
            f"must be >= max(top_k)={max(self.top_k)}",
        )


@dataclass
class Config:
    """A whole recipe: one field per YAML section."""

    model: ModelArgs = help_field("base model (required section)", default_factory=ModelArgs)
    tokenizer: TokenizerArgs = help_field("tokenizer", default_factory=TokenizerArgs)
    lora: LoraArgs = help_field("LoRA adapters", default_factory=LoraArgs)
    data: DataArgs = help_field("data and task mixture", default_factory=DataArgs)
    train: TrainArgs = help_field("optimisation and checkpoints", default_factory=TrainArgs)
    logging: LoggingArgs = help_field("experiment tracking", default_factory=LoggingArgs)
    eval: EvalArgs = help_field("evaluation protocol", default_factory=EvalArgs)

    def __post_init__(self) -> None:
        _check(
            self.model.base_model is not None
            or self.tokenizer.path is not None
            or self.tokenizer.sentencepiece_vocab_size is not None,
            "tokenizer",
            "path",
            "a from-scratch model needs tokenizer.path or tokenizer.sentencepiece_vocab_size",
        )
        _check(
            self.model.attention_implementation != "flex" or not self.train.use_cpu,
            "model",
            "attention_implementation",
            "'flex' trains on CUDA only (torch's FlexAttention has no CPU backward): "
            "use sdpa with train.use_cpu",
        )
        metric = self.train.metric_for_best_model
        if self.train.load_best_model_at_end and metric != "loss":
            k = int(metric.split("@")[1])
            _check(
                k in self.eval.top_k,
                "train",
                "metric_for_best_model",
                f"{metric}: {k} is not one of eval.top_k {list(self.eval.top_k)}",
            )
            ranked = [f for f in RANKING_FAMILIES if self.data.mixture.get(f, 0) > 0]
            _check(
                bool(ranked),
                "train",
                "metric_for_best_model",
                f"{metric} ranks the valid examples of the trained sequential or direct "
                f"families, and data.mixture trains neither: use loss",
            )
        _check(
            self.model.from_scratch is None or not self.lora.enabled,
            "lora",
            "enabled",
            "LoRA on randomly initialised weights trains almost nothing: set lora.enabled: false",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON serialisable) of every resolved field."""
        return dataclasses.asdict(self)

    def save_yaml(self, path: str | os.PathLike[str]) -> None:
        """Write the resolved config as YAML, atomically (temp file, then rename)."""
        atomic_write(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


# --------------------------------------------------------------------------- loading


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def valid_keys() -> list[str]:
    """Every dotted key a config accepts, e.g. ``train.learning_rate``."""
    keys = []
    for section in dataclasses.fields(Config):
        keys += [
            f"{section.name}.{f.name}"
            for f in dataclasses.fields(_field_types(Config)[section.name])
        ]
    return keys


def mapping_keys() -> list[str]:
    """The dotted keys whose value is a mapping (``model.from_scratch``, ``data.mixture``):
    an override may set one entry of them (``model.from_scratch.hidden_size=256``)."""
    keys = []
    for section, section_type in _field_types(Config).items():
        for name, hint in _field_types(section_type).items():
            options = typing.get_args(hint) if typing.get_origin(hint) is types.UnionType else ()
            if any(typing.get_origin(h) is dict for h in (hint, *options)):
                keys.append(f"{section}.{name}")
    return keys


def _field_default(cls: type, name: str) -> Any:
    """The default value of dataclass ``cls``'s field ``name`` (without building ``cls``)."""
    (item,) = (f for f in dataclasses.fields(cls) if f.name == name)
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return None if item.default is dataclasses.MISSING else item.default


def _unknown_key_error(key: str, candidates: list[str], where: str) -> KeyError:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.0)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return KeyError(f"{where}: unknown config key {key!r}{hint}")


def _coerce(value: Any, annotation: Any, key: str, where: str) -> Any:
    """Check ``value`` against a field annotation; ints become floats, '1e-5' strings floats."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        for option in non_none[:-1]:
            try:
                return _coerce(value, option, key, where)
            except ValueError:
                continue
        return _coerce(value, non_none[-1], key, where)
    error = ValueError(f"{where}: config key {key!r} expects {annotation}, got {value!r}")
    if annotation is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise error
        return [_coerce(v, args[0], key, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise error
        return {str(k): _coerce(v, args[1], key, where) for k, v in value.items()}
    if annotation is bool:
        if not isinstance(value, bool):
            raise error
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise error
        return value
    if annotation is float:
        # YAML 1.1 reads "1e-5" (no dot) as a string: accept it as the float it obviously is.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise error from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise error
        return value
    raise TypeError(f"config field {key!r}: unsupported annotation {annotation}")


def config_from_dict(raw: dict[str, Any], where: str = "<dict>") -> Config:
    """Build a :class:`Config` from a nested dict, refusing unknown keys.

    Args:
        raw: ``{section: {field: value}}``; missing sections and fields take their defaults.
        where: what the dict came from (a file path), named in every error.

    Raises:
        KeyError: an unknown section or field, naming the nearest valid key.
        ValueError: a value of the wrong type or failing validation.
    """
    if not isinstance(raw, dict):
        raise ValueError(
            f"{where}: expected a mapping of config sections, got {type(raw).__name__}"
        )
    section_types = _field_types(Config)
    sections: dict[str, Any] = {}
    for section_name, values in raw.items():
        if section_name not in section_types:
            raise _unknown_key_error(section_name, valid_keys() + list(section_types), where)
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ValueError(
                f"{where}: config section {section_name!r} must be a mapping, got {values!r}"
            )
        cls = section_types[section_name]
        hints = _field_types(cls)
        kwargs = {}
        for name, value in values.items():
            key = f"{section_name}.{name}"
            if name not in hints:
                raise _unknown_key_error(key, valid_keys(), where)
            kwargs[name] = _coerce(value, hints[name], key, where)
        try:
            sections[section_name] = cls(**kwargs)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        except KeyError as exc:  # an unknown key inside a dict field (model.from_scratch)
            raise KeyError(f"{where}: {exc.args[0]}") from exc
    try:
        return Config(**sections)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def apply_overrides(
    raw: dict[str, Any], overrides: list[str], where: str = "command line"
) -> dict[str, Any]:
    """Apply ``key=value`` overrides to a nested config dict (returns a new dict).

    Keys are dotted (``train.learning_rate=1e-4``), name one entry of a mapping field
    (``model.from_scratch.max_sequence_length=2048``, ``data.mixture.direct=0.5``: the
    other entries, the file's or else the default's, stay), or are one of the shorthands
    ``output_dir`` and ``max_steps``. Values are parsed with ``yaml.safe_load``.
    """
    result = {section: dict(values or {}) for section, values in raw.items()}
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"{where}: override {override!r} is not of the form key=value")
        key, text = override.split("=", 1)
        key = SHORTHANDS.get(key.strip(), key.strip())
        field_key, _, entry = key.rpartition(".") if key.count(".") == 2 else (key, "", "")
        if field_key.count(".") != 1:
            raise _unknown_key_error(key, valid_keys() + list(SHORTHANDS), where)
        if field_key not in valid_keys() or (entry and field_key not in mapping_keys()):
            raise _unknown_key_error(key, valid_keys(), where)
        section, name = field_key.split(".")
        value = load_yaml(text, f"{where}: override {key}") if text.strip() else None
        if entry:  # one entry of a mapping field, e.g. model.from_scratch.hidden_size=256
            current = result.setdefault(section, {}).get(name)
            if current is None:  # not in the file: the entries of the field's default
                current = _field_default(_field_types(Config)[section], name) or {}
            result[section][name] = {**current, entry: value}
        else:
            result.setdefault(section, {})[name] = value
    return result


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> Config:
    """Read a recipe YAML, apply ``key=value`` overrides, validate, return the :class:`Config`.

    Raises:
        FileNotFoundError: the YAML does not exist.
        KeyError: an unknown key (in the file or an override), naming the nearest valid key.
        ValueError: malformed YAML, a wrong type or a value failing validation.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    raw = read_yaml(path)  # refuses duplicate keys, naming file and line
    raw = apply_overrides(raw or {}, list(overrides or []), where=f"{path} (overrides)")
    return config_from_dict(raw, where=str(path))
