"""Training: config -> model + LoRA + data + HF Trainer (DeepSpeed or not) -> checkpoints.

    python scripts/train.py --config configs/tiny_ml100k.yaml [key=value ...]
    deepspeed scripts/train.py --config configs/glm10b_lora.yaml
    torchrun --nproc_per_node 8 scripts/train.py --config configs/glm2b_lora.yaml

Why transformers' Trainer: its DeepSpeed integration (ZeRO-2/3, offload, "auto" values
filled from the config), gradient accumulation, mixed precision, resumable optimizer /
scheduler / RNG state, progress bars and wandb/TensorBoard reporting are what a HF user
expects and are well tested; this module adds only what RecSysLLM needs on top:

- Data: :class:`MixtureDataset` concatenates ``train.epochs`` epoch mixtures
  (``TaskBuilder.training_examples(mixture, seed, epoch)``, each shuffled by the builder)
  and the Trainer reads it in order (``train_sampling_strategy="sequential"``) as ONE
  Trainer epoch. The data order is thus a function of (data seed, epoch) only, and a
  resumed run skips exactly the batches already consumed. Under several ranks, batch
  ``i`` goes to rank ``i % world_size`` (accelerate's sharding): ranks see different data.
- Batches: with packing across batches (``data.packing`` and ``data.packing_window`` >
  0, the default) the Trainer reads a :class:`packing.PackedDataset` whose items are rows
  of ``data.packing_row_length`` (default ``data.max_length``) tokens, planned over
  windows of examples (nearly every row full), and ``train.per_device_batch_size``
  counts those *rows*. Otherwise it counts
  *examples* per device and micro-step, and with ``data.packing`` the collator merges
  each batch's examples into fewer rows (block-diagonal attention). Either way the
  row plan is a function of (seeds, epoch), so resume stays exact.
- Loss: the model computes it (``return_logits=False``: the head runs on the labelled
  positions only) as summed cross-entropy over the micro-batch's labelled tokens divided
  by ``num_items_in_batch``, the labelled tokens of the whole optimizer step (all
  micro-steps and all ranks, counted by the Trainer and passed to the model). The
  optimizer step therefore follows the gradient of the mean over the step's labelled
  tokens whatever the accumulation, the packing or the per-micro-batch token counts.
- Guard rail: a non-finite loss stops the run naming the step and the examples
  (task/template/user) of the batch; the last checkpoint on disk is untouched.
- Checkpoints (every ``train.save_steps`` and at the end) are written into
  ``output_dir/.staging/`` and renamed into place once complete, so a crash while
  saving never leaves a half-written ``checkpoint-N``. Each holds the adapter (or full
  weights), the Trainer state, the resolved config, tokenizer, prompts, catalog,
  direct candidates, ``recsysllm_meta.json`` and a model card. ``output_dir/final``
  holds the same without optimizer state.
- Resume (``train.resume: latest | PATH``) refuses a checkpoint whose recorded base
  model, tokenizer or catalog differs from the ones being used.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import (
    EarlyStoppingCallback,
    SchedulerType,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint, rotate_checkpoints

from recsysllm.checkpoint_meta import (
    CheckpointMeta,
    CheckpointMismatchError,
    check_compatible,
    read_meta,
    verify_weights,
)
from recsysllm.checkpoints import read_checkpoint_config, write_extras
from recsysllm.collator import IGNORE_INDEX, BlankInfillingCollator, MaskingConfig
from recsysllm.config import RANKING_FAMILIES, Config, DataArgs, load_config
from recsysllm.data.tasks import TaskBuilder, TaskMixture
from recsysllm.item_loss import ItemAnswerVocabulary
from recsysllm.modeling.families import get_backbone, resolve_family
from recsysllm.packing import PackedDataset
from recsysllm.pipeline import (
    PreparedData,
    answer_budget,
    build_model,
    build_tokenizer,
    cap_item_names,
    check_position_table,
    prepare_data,
    task_mixture,
)
from recsysllm.prompt_layout import SpecialTokenIds, check_prompts_fit
from recsysllm.schema import TokenizedExample
from recsysllm.trie import EntityTrie

logger = logging.getLogger(__name__)

STAGING_DIRNAME = ".staging"
FINAL_DIRNAME = "final"
BATCH_IDENTITY_KEY = "batch_examples"
# Packed batches whose rows differ much in width (short packed rows beside the long
# example alone in its row): [(row indices, width), ...], each group run at its own width.
ROW_GROUPS_KEY = "batch_row_groups"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the batch."""


# --------------------------------------------------------------------------- data


class TrainingItem(NamedTuple):
    """One dataset item: where it comes from and the tokenized example."""

    index: int
    epoch: int
    tokenized: TokenizedExample


class MixtureDataset(torch.utils.data.Dataset):
    """``epochs`` epoch mixtures one after the other; item ``i`` is tokenized on access.

    Epoch ``e`` is ``tasks.training_examples(mixture, seed, e)``. Only the epoch being
    read is kept in memory (each DataLoader worker keeps its own copy). The length of an
    epoch is ``mixture.examples_per_epoch``, or (when that is null) found by drawing
    every epoch once up front.
    """

    def __init__(
        self, tasks: TaskBuilder, tokenizer: Any, mixture: TaskMixture, seed: int, epochs: int
    ) -> None:
        self.tasks = tasks
        self.tokenizer = tokenizer
        self.mixture = mixture
        self.seed = seed
        self._epoch: int | None = None
        self._examples: list = []
        if mixture.examples_per_epoch is not None:
            self.lengths = [mixture.examples_per_epoch] * epochs
        else:
            self.lengths = []
            for epoch in range(epochs):
                self._load(epoch)
                self.lengths.append(len(self._examples))
        self.offsets = [sum(self.lengths[:e]) for e in range(epochs + 1)]

    def _load(self, epoch: int) -> None:
        if self._epoch != epoch:
            self._examples = self.tasks.training_examples(self.mixture, seed=self.seed, epoch=epoch)
            self._epoch = epoch

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> TrainingItem:
        if not 0 <= index < len(self):
            raise IndexError(index)
        epoch = next(e for e in range(len(self.lengths)) if index < self.offsets[e + 1])
        self._load(epoch)
        example = self._examples[index - self.offsets[epoch]]
        return TrainingItem(index, epoch, self.tokenizer.tokenize_example(example))


class TrainingCollator:
    """Wraps :class:`BlankInfillingCollator` for the Trainer.

    Takes examples (``TrainingItem`` or ``TokenizedExample``: packed within the batch as
    the collator is configured) or rows planned by :class:`PackedDataset` (tuples of
    ``TrainingItem``: one output row each). Sets the collator's epoch from the batch (so
    pretraining masks are a function of the example and its epoch, not of how many
    batches a worker has seen: resume-safe) and adds the batch's example identities under
    ``BATCH_IDENTITY_KEY`` for error messages.
    """

    def __init__(self, collator: BlankInfillingCollator, row_length: int | None = None) -> None:
        self.collator = collator
        self.row_length = row_length

    def __call__(
        self, items: Sequence[TrainingItem | TokenizedExample | tuple[TrainingItem, ...]]
    ) -> dict[str, Any]:
        if isinstance(items[0], tuple) and not isinstance(items[0], TrainingItem):
            rows = [list(row) for row in items]
            items = [it for row in rows for it in row]
            # Each example with its own epoch's masks, as the rows were planned: a batch
            # may span the end of an epoch.
            encoded = []
            for row in rows:
                encoded.append([])
                for it in row:
                    self.collator.set_epoch(it.epoch)
                    encoded[-1].append(self.collator.encode(it.tokenized))
            batch: dict[str, Any] = self.collator.collate_rows(encoded, row_length=self.row_length)
            groups = self.row_groups(self.collator.last_row_lengths)
            if groups is not None:
                batch[ROW_GROUPS_KEY] = groups
        else:
            items = [
                it if isinstance(it, TrainingItem) else TrainingItem(-1, 0, it) for it in items
            ]
            self.collator.set_epoch(items[0].epoch)
            batch = self.collator([it.tokenized for it in items])
        batch[BATCH_IDENTITY_KEY] = [
            f"item {it.index} (epoch {it.epoch}) {it.tokenized.describe()}" for it in items
        ]
        return batch

    def row_groups(self, row_lengths: Sequence[int]) -> list[tuple[list[int], int]] | None:
        """Rows of at most ``row_length`` tokens and longer rows, each group with its width.

        A packed batch is as wide as its longest row, so one example longer than
        ``row_length`` (alone in its row) would widen every row of the batch to its
        length; the trainer runs each group at its own width instead (the same loss and
        gradients: :meth:`RecTrainer.compute_loss`). None: one group, nothing to split.
        """
        if self.row_length is None:
            return None
        short = [row for row, length in enumerate(row_lengths) if length <= self.row_length]
        wide = [row for row, length in enumerate(row_lengths) if length > self.row_length]
        if not short or not wide:
            return None
        return [
            (rows, self.collator.padded_width(max(row_lengths[row] for row in rows)))
            for rows in (short, wide)
        ]


# --------------------------------------------------------------------------- trainer


def _row_slice(
    inputs: dict[str, Any], rows: list[int], width: int, label_counts: torch.Tensor
) -> dict[str, Any]:
    """The batch restricted to ``rows`` (ascending), cut to their first ``width`` columns.

    ``label_counts``: labelled tokens per row, to pick the rows' ``label_allowed`` rows
    (which follow ``labels != -100`` row-major).
    """
    index = torch.tensor(rows, device=inputs["input_ids"].device)
    part: dict[str, Any] = {}
    for key, value in inputs.items():
        if key in ("input_ids", "labels"):
            part[key] = value[index, :width]
        elif key in ("position_ids", "attention_intervals"):
            part[key] = value[index, :, :width]
        elif key == "attention_mask":
            part[key] = value[index, :, :width, :width]
        elif key == "label_allowed":
            # The batch row of each labelled token, in label_allowed's (row-major) order.
            label_rows = torch.repeat_interleave(
                torch.arange(len(label_counts), device=label_counts.device), label_counts
            )
            part[key] = value[torch.isin(label_rows, index.to(label_rows.device))]
        elif torch.is_tensor(value):
            raise ValueError(f"cannot split batch field {key!r} by rows")
        else:
            part[key] = value
    return part


class TimeBudget(TrainerCallback):
    """``train.max_seconds``: stops at the first optimizer step past the budget.

    ``fraction`` (elapsed / budget, updated at every step's end) is what the budgeted
    learning-rate schedule reads (:func:`budget_lr_lambda`). Under several ranks the
    elapsed time is the slowest rank's (an all-reduce MAX), so every rank stops at the
    same step and follows the same learning rates.
    """

    def __init__(self, max_seconds: float, clock: Any = time.monotonic) -> None:
        self.max_seconds = max_seconds
        self.clock = clock
        self.started: float | None = None
        self.fraction = 0.0
        self.stopped_at: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
        self.started = self.clock()
        self.fraction = 0.0
        self.stopped_at = None

    def on_step_end(self, args, state, control, **kwargs):  # noqa: D102
        elapsed = self.clock() - self.started
        if args.world_size > 1:
            shared = torch.tensor([elapsed], dtype=torch.float64, device=args.device)
            torch.distributed.all_reduce(shared, op=torch.distributed.ReduceOp.MAX)
            elapsed = shared.item()
        self.fraction = elapsed / self.max_seconds
        if self.fraction >= 1.0 and not control.should_training_stop:
            self.stopped_at = state.global_step
            control.should_training_stop = True
        return control


def budget_lr_lambda(schedule: str, warmup: int, total: int, budget: TimeBudget) -> Any:
    """The learning-rate factor of ``schedule`` whose progress is also wall time.

    After warmup the progress is ``max(budget.fraction, (step - warmup) / (total -
    warmup))``: the schedule ends at the budget or at the last step, whichever comes
    first. With ``budget.fraction`` 0 every factor equals transformers' ``get_scheduler``
    of the same name. A plain function, so the scheduler's state_dict stays picklable.
    """

    def factor(step: int) -> float:
        if schedule == "constant":
            return 1.0
        if step < warmup:
            return step / max(1, warmup)
        if schedule == "constant_with_warmup":
            return 1.0
        progress = min(1.0, max(budget.fraction, (step - warmup) / max(1, total - warmup)))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine

    return factor


class RankingValidation:
    """Valid-split ranking metrics at every evaluation (``train.eval_ranking_users``).

    The ranking examples (next item over all items, 1-of-N candidate lists) of a fixed,
    seeded sample of valid users are scored exactly as ``recsysllm evaluate`` scores
    them (:func:`recsysllm.evaluation.evaluator.evaluate`: the constrained search, the
    same protocol), so a checkpoint can be chosen by the metric the tables report. The
    token loss on the valid answers is no stand-in for it: on MovieLens-100K it is
    lowest while the ranking is still far from its best (``benchmarks/RESULTS.md``).

    Every rank scores the same examples (the sample is small; the search is
    deterministic), so all ranks hold the same metrics.

    Args:
        examples: the valid ranking examples to score (the same at every evaluation).
        protocol: cut-offs, exclusion and history of the evaluation.
        inference: keyword arguments of :class:`recsysllm.inference.Inference` but the
            model (tokenizer, catalog, max_length, answer_budget, renormalize).
        num_beams: beams of the constrained all-item search.
        batch_size: prompts per search batch.
    """

    def __init__(
        self,
        examples: Sequence[Any],
        protocol: Any,
        inference: dict[str, Any],
        num_beams: int,
        batch_size: int,
    ) -> None:
        self.examples = list(examples)
        self.protocol = protocol
        self.inference = inference
        self.num_beams = num_beams
        self.batch_size = batch_size

    def __call__(self, model: torch.nn.Module, prefix: str = "eval") -> dict[str, float]:
        """``{prefix}_hr@k`` and ``{prefix}_ndcg@k`` over all the examples (each weighs
        the same), and the same per variant (``{prefix}_all_items_hr@k``, ...)."""
        from recsysllm.evaluation import metrics
        from recsysllm.evaluation.evaluator import ModelRanker, evaluate
        from recsysllm.inference import Inference

        inference = Inference(model, **self.inference)
        results = evaluate(
            model,
            inference.tokenizer,
            inference.catalog,
            self.examples,
            protocol=self.protocol,
            max_length=inference.max_length,
            batch_size=self.batch_size,
            num_beams=self.num_beams,
            progress=False,
            ranker=ModelRanker(inference, self.num_beams),
        )
        groups = {"": results.outcomes}
        for outcome in results.outcomes:
            groups.setdefault(f"{outcome.variant}_", []).append(outcome)
        scores: dict[str, float] = {}
        for name, outcomes in groups.items():
            ranks = [o.rank for o in outcomes]
            for k in self.protocol.ks:
                scores[f"{prefix}_{name}hr@{k}"] = metrics.hit_rate_at_k(ranks, k)
                scores[f"{prefix}_{name}ndcg@{k}"] = metrics.ndcg_at_k(ranks, k)
        return scores


class RecTrainer(Trainer):
    """HF Trainer with the loss guard and atomic, self-contained checkpoints.

    Args:
        checkpoint_extras: ``f(directory, step)`` writing config, tokenizer, prompts,
            catalog, meta and model card into a checkpoint directory (main process only).
        **kwargs: passed to ``transformers.Trainer``.
    """

    def __init__(
        self,
        *args: Any,
        checkpoint_extras: Any = None,
        time_budget: TimeBudget | None = None,
        ranking_validation: RankingValidation | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.checkpoint_extras = checkpoint_extras
        self.time_budget = time_budget
        self.ranking_validation = ranking_validation
        if time_budget is not None:
            self.add_callback(time_budget)
        self._staging = False

    def create_scheduler(self, num_training_steps, optimizer=None):  # noqa: D102
        if self.time_budget is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer if optimizer is not None else self.optimizer,
            budget_lr_lambda(
                SchedulerType(self.args.lr_scheduler_type).value,
                self.args.get_warmup_steps(num_training_steps),
                num_training_steps,
                self.time_budget,
            ),
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
        identity = inputs.pop(BATCH_IDENTITY_KEY, None)
        groups = inputs.pop(ROW_GROUPS_KEY, None)
        # Loss only: the model runs its head on the labelled (Part B) positions alone.
        inputs = {**inputs, "return_logits": False}
        if groups is None or return_outputs:
            result = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        else:
            result = self._grouped_loss(model, inputs, groups, num_items_in_batch)
        loss = result[0] if return_outputs else result
        bad = torch.tensor(
            [0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=loss.device
        )
        if self.args.world_size > 1:
            # Every rank must stop together, or the others hang in the next all-reduce.
            torch.distributed.all_reduce(bad)
        if bad.item() > 0:
            message = (
                f"non-finite loss {loss.item()} at step {self.state.global_step + 1} "
                f"(rank {self.args.process_index}); batch: {identity}. "
                f"The last checkpoint in {self.args.output_dir} is kept as it was."
            )
            logger.error(message)
            raise NonFiniteLossError(message)
        return result

    def _grouped_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        groups: list[tuple[list[int], int]],
        num_items_in_batch: Any,
    ) -> torch.Tensor:
        """The batch's loss, each row group run at its own width (``ROW_GROUPS_KEY``).

        Equal to the loss of the whole padded batch: each group's summed cross-entropy
        is divided by the same count (Trainer's ``num_items_in_batch``, else the batch's
        labelled tokens, weighting each group's mean by its share of them).
        """
        labels = inputs["labels"]
        counts = (labels != IGNORE_INDEX).sum(dim=1)
        total = counts.sum().clamp(min=1)
        loss = None
        for rows, width in groups:
            part = _row_slice(inputs, rows, width, counts)
            group_loss = super().compute_loss(model, part, num_items_in_batch=num_items_in_batch)
            if num_items_in_batch is None:
                group_loss = group_loss * (counts[rows].sum() / total)
            loss = group_loss if loss is None else loss + group_loss
        return loss

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        # The loss, then the ranking metrics, in the metrics the Trainer logs, hands to its
        # callbacks (early stopping) and chooses the best checkpoint by.
        output = super().evaluation_loop(*args, **kwargs)
        if self.ranking_validation is not None:
            prefix = kwargs.get("metric_key_prefix", "eval")
            with self.accelerator.autocast():
                output.metrics.update(self.ranking_validation(self.model, prefix))
        return output

    def _get_output_dir(self, trial: Any) -> str:
        if self._staging:
            return os.path.join(self.args.output_dir, STAGING_DIRNAME)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        # The Trainer writes checkpoint-N in place; we let it write into .staging/ and
        # rename the finished directory, so a crash never leaves a partial checkpoint.
        step = self.state.global_step
        name = f"checkpoint-{step}"
        staged = Path(self.args.output_dir) / STAGING_DIRNAME / name
        final = Path(self.args.output_dir) / name
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        # Every rank has written its part (DeepSpeed shards) before the directory moves.
        self.accelerator.wait_for_everyone()
        # The Trainer looked for the best checkpoint (load_best_model_at_end) under .staging/,
        # where only this one is: point its state at the published directory instead.
        best = self.state.best_global_step
        if best:
            path = Path(self.args.output_dir) / f"checkpoint-{best}"
            self.state.best_model_checkpoint = str(path) if best == step or path.is_dir() else None
        if self.args.should_save:
            if best:  # the copy a resumed run reads
                self.state.save_to_json(str(staged / TRAINER_STATE_NAME))
            if self.checkpoint_extras is not None:
                self.checkpoint_extras(staged, step)
            publish_directory(staged, final)
            rotate_checkpoints(
                str(self.args.output_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
            )
        self.accelerator.wait_for_everyone()

    def final_step(self) -> int:
        """The optimizer step whose weights ``final`` holds: the best checkpoint's when the
        Trainer loaded it at the end (``train.load_best_model_at_end``), else the last."""
        if self.args.load_best_model_at_end and self.state.best_model_checkpoint is not None:
            return self.state.best_global_step
        return self.state.global_step

    def save_final(self) -> Path:
        """Write ``output_dir/final``: weights/adapter + extras, no optimizer state (atomic)."""
        staged = Path(self.args.output_dir) / STAGING_DIRNAME / FINAL_DIRNAME
        final = Path(self.args.output_dir) / FINAL_DIRNAME
        self.save_model(str(staged))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if self.checkpoint_extras is not None:
                self.checkpoint_extras(staged, self.final_step())
            publish_directory(staged, final)
        self.accelerator.wait_for_everyone()
        return final


def publish_directory(staged: Path, final: Path) -> None:
    """Move a complete ``staged`` directory to ``final``, replacing an older one.

    ``os.replace`` of a directory is atomic on POSIX; an existing ``final`` is first
    moved aside (a rename) and deleted only after the new one is in place.
    """
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old)
    with contextlib.suppress(OSError):  # only when empty: another rank may still be staging
        staged.parent.rmdir()


# --------------------------------------------------------------------------- checkpoint contents


class CheckpointExtras:
    """Writes everything besides weights and Trainer state into a checkpoint directory
    (:func:`recsysllm.checkpoints.write_extras`)."""

    def __init__(
        self,
        config: Config,
        data: PreparedData,
        tokenizer: Any,
        base_model_fingerprint: str,
        added_token_ids: list[int],
    ) -> None:
        self.config = config
        self.data = data
        self.tokenizer = tokenizer
        self.base_model_fingerprint = base_model_fingerprint
        self.added_token_ids = list(added_token_ids)

    def meta(self, step: int) -> CheckpointMeta:
        return CheckpointMeta(
            base_model=self.config.model.base_model,
            base_model_fingerprint=self.base_model_fingerprint,
            tokenizer_fingerprint=self.tokenizer.fingerprint,
            catalog_hash=self.data.catalog.hash,
            prompts_hash=self.data.prompts.hash,
            lora=self.config.lora.enabled,
            step=step,
            added_token_ids=self.added_token_ids,
        )

    def __call__(self, directory: Path, step: int) -> None:
        write_extras(
            directory,
            config=self.config,
            tokenizer=self.tokenizer,
            prompts=self.data.prompts,
            catalog=self.data.catalog,
            splits=self.data.splits,
            feature_templates=self.data.tables.user_features,
            meta=self.meta(step),
        )


# --------------------------------------------------------------------------- wiring


def _report_to(config: Config) -> list[str]:
    """Trainer reporters; wandb runs offline unless an API key is configured."""
    report = []
    if config.logging.wandb_project and os.environ.get("WANDB_MODE") != "disabled":
        os.environ.setdefault("WANDB_PROJECT", config.logging.wandb_project)
        netrc = Path.home() / ".netrc"
        has_key = bool(os.environ.get("WANDB_API_KEY")) or (
            netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
        )
        if not has_key:
            os.environ.setdefault("WANDB_MODE", "offline")
        report.append("wandb")
    if config.logging.tensorboard:
        report.append("tensorboard")
    return report


def _on_cpu(config: Config) -> bool:
    return config.train.use_cpu or not torch.cuda.is_available()


def training_arguments(config: Config) -> TrainingArguments:
    """The ``train`` and ``logging`` sections as ``transformers.TrainingArguments``."""
    train = config.train
    on_cpu = _on_cpu(config)
    if train.deepspeed is not None and on_cpu:
        # DeepSpeed's CPU accelerator would JIT-compile its shared-memory all-reduce op
        # (~70 s of C++ build) at init; CPU runs are tests and demos: gloo is enough.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return TrainingArguments(
        output_dir=train.output_dir,
        learning_rate=train.learning_rate,
        warmup_steps=train.warmup_steps if train.warmup_steps > 0 else train.warmup_ratio,
        lr_scheduler_type=train.lr_schedule,
        num_train_epochs=1,  # MixtureDataset already holds train.epochs epochs
        max_steps=train.max_steps,
        per_device_train_batch_size=train.per_device_batch_size,
        per_device_eval_batch_size=train.per_device_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        max_grad_norm=train.max_grad_norm,
        weight_decay=train.weight_decay,
        adam_beta1=train.adam_beta1,
        adam_beta2=train.adam_beta2,
        adam_epsilon=train.adam_epsilon,
        optim="adamw_torch",
        bf16=train.precision == "bf16",
        fp16=train.precision == "fp16",
        activation_checkpointing=train.gradient_checkpointing,
        # Non-reentrant checkpointing back-propagates into LoRA weights even though the
        # frozen embeddings' output needs no grad. every_n_layers: selective checkpointing.
        activation_checkpointing_kwargs={
            "use_reentrant": False,
            "every_n_layers": train.gradient_checkpointing_every,
        }
        if train.gradient_checkpointing
        else None,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        eval_strategy="steps" if train.eval_steps else "no",
        eval_steps=train.eval_steps,
        # The loss (lower is better) or a ranking metric of RankingValidation (higher).
        load_best_model_at_end=train.load_best_model_at_end,
        metric_for_best_model=train.metric_for_best_model if train.load_best_model_at_end else None,
        greater_is_better=train.metric_for_best_model != "loss"
        if train.load_best_model_at_end
        else None,
        logging_steps=train.logging_steps,
        logging_first_step=True,
        seed=train.seed,
        data_seed=config.data.seed,
        deepspeed=train.deepspeed,
        dataloader_num_workers=train.dataloader_workers,
        report_to=_report_to(config),
        run_name=config.logging.wandb_run_name or Path(train.output_dir).name,
        remove_unused_columns=False,
        prediction_loss_only=True,
        label_names=["labels"],
        train_sampling_strategy="sequential",
        use_cpu=train.use_cpu,
        # NCCL is GPU-only: CPU ranks (torchrun / deepspeed launcher, tests) talk over gloo.
        ddp_backend="gloo" if on_cpu and ("WORLD_SIZE" in os.environ or train.deepspeed) else None,
    )


def resolve_resume(config: Config) -> str | None:
    """``train.resume`` as a checkpoint directory: null -> None, "latest" -> newest checkpoint-N."""
    resume = config.train.resume
    if resume is None:
        return None
    if resume == "latest":
        output_dir = Path(config.train.output_dir)
        last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if last is None:
            logger.info("train.resume=latest: no checkpoint in %s, starting fresh", output_dir)
        return last
    if not Path(resume).is_dir():
        raise FileNotFoundError(
            f"config field train.resume: {resume} is not a checkpoint directory"
        )
    return resume


def masking_config(data_args: DataArgs) -> MaskingConfig:
    """The collator's masking fields of ``data_args`` as a :class:`MaskingConfig`."""
    return MaskingConfig(
        mask_prob=data_args.mask_prob,
        smask_prob=data_args.smask_prob,
        gmask_prob=data_args.gmask_prob,
    )


def check_candidate_prompts_fit(config: Config, data: PreparedData, tokenizer: Any) -> None:
    """Refuse, before training starts, templates whose candidate lists cannot fit.

    Candidates are never truncated (prompt_layout). Checked on the valid split's
    stored lists (as many candidates as training samples), seen templates of the
    families in the mixture (only those of ``data.train_templates`` when set); a
    training list of longer titles that still does not fit is refused by the
    collator, naming the template.
    """
    mixture = task_mixture(config.data)
    families = [f for f in RANKING_FAMILIES if mixture.weights.get(f, 0) > 0]
    _check_stored_lists_fit(
        config, data, tokenizer, "valid", families, "seen",
        where="training data (data.max_length)", templates=mixture.templates,
    )  # fmt: skip


def check_evaluation_prompts_fit(config: Config, data: PreparedData, tokenizer: Any) -> None:
    """Refuse, before training starts, stored valid/test lists the evaluation cannot fit.

    ``recsysllm evaluate`` refuses a candidate list that does not fit ``data.max_length``
    (candidates are never truncated). Every user's stored list of both splits is
    checked here, under the templates the config's evaluation runs (``eval.families``,
    ``eval.prompts``), so a list too long for the model's length is found before the
    compute is spent, not by the test-split evaluation afterwards. Reading the lengths
    of the test lists chooses nothing.
    """
    families = [f for f in RANKING_FAMILIES if f in config.eval.families]
    for split in ("valid", "test"):
        _check_stored_lists_fit(
            config, data, tokenizer, split, families, config.eval.prompts,
            where=f"evaluation of the {split} split (data.max_length; eval.families, eval.prompts)",
        )  # fmt: skip


def _check_stored_lists_fit(
    config: Config,
    data: PreparedData,
    tokenizer: Any,
    split: str,
    families: list[str],
    prompts: str,
    where: str,
    templates: Sequence[str] | None = None,
) -> None:
    """``check_prompts_fit`` on ``split``'s examples with candidates (of ``templates`` only,
    when given), built with the evaluation seed as the stored lists are."""
    if not families:
        return
    examples = data.tasks.examples(
        split, families, prompts=prompts, seed=config.data.evaluation_seed
    )
    check_prompts_fit(
        (
            tokenizer.tokenize_example(e)
            for e in examples
            if e.candidates and (templates is None or e.template_id in templates)
        ),
        SpecialTokenIds.from_tokenizer(tokenizer),
        answer_budget(config.data, data.catalog, tokenizer),
        config.data.max_length,
        where=where,
    )


def row_length(config: Config) -> int:
    """Tokens per row planned by the packing sampler (``data.packing_row_length``)."""
    return config.data.packing_row_length or config.data.max_length


def training_data(
    config: Config, data: PreparedData, tokenizer: Any, mixture: TaskMixture
) -> tuple[torch.utils.data.Dataset, TrainingCollator]:
    """The training dataset as the Trainer reads it, and the Trainer's data collator.

    With ``data.packing`` and ``data.packing_window`` > 0: a :class:`PackedDataset` of
    rows over the :class:`MixtureDataset` (every example is tokenized and encoded once
    up front to plan the rows). Otherwise the :class:`MixtureDataset` itself.
    """
    collator = BlankInfillingCollator(
        tokenizer,
        max_length=config.data.max_length,
        answer_budget=answer_budget(config.data, data.catalog, tokenizer),
        masking=masking_config(config.data),
        packing=config.data.packing,
        seed=config.train.seed,
        # Few distinct batch shapes: attention kernels plan once per shape (the family's).
        pad_to_multiple_of=get_backbone(
            resolve_family(config.model.family, config.model.base_model)
        ).TRAINING_PAD_MULTIPLE,
        # FlexAttention builds its block mask from per-token key intervals.
        attention_layout="intervals" if config.model.attention_implementation == "flex" else "mask",
        item_answers=(
            ItemAnswerVocabulary(
                EntityTrie.from_catalog(data.catalog, tokenizer),
                tokenizer.eop_token_id,
                config.train.renormalize,
            )
            if config.train.renormalize
            else None
        ),
        position_offsets=config.data.position_offsets,
    )
    examples = MixtureDataset(
        data.tasks, tokenizer, mixture, seed=config.data.seed, epochs=config.train.epochs
    )
    if not (config.data.packing and config.data.packing_window > 0):
        return examples, TrainingCollator(collator)
    planner = copy.copy(collator)  # its own epoch: the plan must not move the collator's

    def encoded_length(item: TrainingItem) -> int:
        planner.set_epoch(item.epoch)
        return planner.encode(item.tokenized).length

    packed = PackedDataset(
        examples,
        examples.offsets,
        encoded_length,
        max_length=row_length(config),
        window=config.data.packing_window,
        seed=config.data.seed,
        max_example_length=config.data.max_length,
    )
    return packed, TrainingCollator(collator, row_length=row_length(config))


def ranking_validation_for(
    config: Config, data: PreparedData, tokenizer: Any, mixture: TaskMixture
) -> RankingValidation | None:
    """The :class:`RankingValidation` of a config: the valid examples of the trained
    ranking families under their trained seen templates, for a seeded sample of
    ``train.eval_ranking_users`` users (``recsysllm evaluate --limit``'s draw); None when
    the mixture trains no ranking family."""
    from recsysllm.evaluation.cli import sample_users
    from recsysllm.evaluation.evaluator import (
        RANKING_VARIANTS,
        EvalProtocol,
        example_variant,
        history_items,
    )

    families = [f for f in RANKING_FAMILIES if mixture.weights.get(f, 0) > 0]
    if not families:
        return None
    seed = config.data.evaluation_seed
    examples = data.tasks.examples("valid", families, prompts="seen", seed=seed)
    # Ranked answers only: the direct family's yes/no templates are no ranking.
    examples = [e for e in examples if example_variant(e) in RANKING_VARIANTS]
    if mixture.templates is not None:
        examples = [e for e in examples if e.template_id in mixture.templates]
    examples, sample = sample_users(examples, config.train.eval_ranking_users, seed)
    if not examples:
        return None
    logger.info(
        "ranking validation at every evaluation: %d valid examples of %s",
        len(examples),
        sample["description"],
    )
    protocol = EvalProtocol(
        ks=tuple(config.eval.top_k),
        exclude_history=config.eval.exclude_history,
        history=history_items(data.splits, "valid"),
        seed=seed,
    )
    inference = {
        "tokenizer": tokenizer,
        "catalog": data.catalog,
        "max_length": config.data.max_length,
        "answer_budget": answer_budget(config.data, data.catalog, tokenizer),
        "renormalize": sorted(set(config.eval.renormalize) - {"none"}),
    }
    return RankingValidation(
        examples, protocol, inference, config.eval.num_beams, config.eval.batch_size
    )


def item_naming_differences(data_args: DataArgs, trained: DataArgs) -> list[str]:
    """The item-name settings of ``data_args`` that differ from a checkpoint's, as
    ``data.FIELD: TRAINED`` (what would restore them); empty when they agree."""
    fields = ["item_name_max_tokens"]
    if trained.item_name_max_tokens is not None:  # without a cap nothing was told apart
        fields.append("item_name_disambiguation")
    return [
        f"data.{name}: {'null' if getattr(trained, name) is None else getattr(trained, name)}"
        for name in fields
        if getattr(data_args, name) != getattr(trained, name)
    ]


def build_trainer(
    config: Config, data: PreparedData | None = None
) -> tuple[RecTrainer, str | None]:
    """Everything up to ``trainer.train()``: data, tokenizer, model, collator, Trainer.

    Returns:
        The trainer and the checkpoint directory to resume from (or None).
    """
    args = training_arguments(config)  # first: initialises the distributed backend
    if data is None:
        data = prepare_data(config.data, seed=config.data.evaluation_seed)
    mixture = task_mixture(config.data)
    # The main process trains a sentencepiece tokenizer first; the others then load it.
    with args.main_process_first(local=False, desc="tokenizer"):
        tokenizer = build_tokenizer(
            config.tokenizer,
            data,
            config.train.output_dir,
            base_model=config.model.base_model,
            mixture=mixture,
            seed=config.data.seed,
            family=config.model.family,
        )
    data = cap_item_names(data, config.data, tokenizer)
    built = build_model(config.model, config.lora, tokenizer, seed=config.train.seed)
    check_position_table(built.model.config, config.data.max_length)
    if config.train.compile_blocks:
        # Each block on its own (compiled lazily, on its first call): activation
        # checkpointing, LoRA and the loss stay outside the compiled graphs.
        for module in built.model.modules():
            if isinstance(module, GradientCheckpointingLayer):  # every family's blocks
                module.compile()
    extras = CheckpointExtras(
        config, data, tokenizer, built.base_model_fingerprint, built.added_token_ids
    )
    resume = resolve_resume(config)
    if resume is not None:
        # Refuse to continue an adapter on other base weights, tokenizer or items.
        resume_meta = read_meta(resume)
        verify_weights(resume, resume_meta)
        try:
            check_compatible(
                resume_meta,
                base_model_fingerprint=built.base_model_fingerprint,
                tokenizer_fingerprint=tokenizer.fingerprint,
                catalog_hash=data.catalog.hash,
                where=resume,
            )
        except CheckpointMismatchError as error:
            # Say which setting renamed the items (the default cap changed in issue 12).
            restore = item_naming_differences(config.data, read_checkpoint_config(resume).data)
            if not restore or "entity catalog" not in str(error):
                raise
            raise CheckpointMismatchError(
                f"{error}; its items were named otherwise: set {', '.join(restore)} to resume it"
            ) from None
    check_candidate_prompts_fit(config, data, tokenizer)
    check_evaluation_prompts_fit(config, data, tokenizer)
    train_dataset, data_collator = training_data(config, data, tokenizer, mixture)
    eval_dataset = None
    if config.train.eval_steps:
        families = [f for f in config.eval.families if mixture.weights.get(f, 0) > 0]
        eval_examples = data.tasks.examples(
            "valid", families, prompts="seen", seed=config.data.evaluation_seed
        )
        eval_dataset = [tokenizer.tokenize_example(e) for e in eval_examples]
    ranking_validation = None
    if config.train.eval_steps and config.train.eval_ranking_users:
        ranking_validation = ranking_validation_for(config, data, tokenizer, mixture)
    metric = config.train.metric_for_best_model
    if config.train.load_best_model_at_end and metric != "loss" and ranking_validation is None:
        raise ValueError(
            f"config field train.metric_for_best_model: {metric} needs valid ranking examples "
            "of the trained templates (data.train_templates, data.mixture), and there are "
            "none: use loss"
        )
    trainer = RecTrainer(
        model=built.model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=data_collator,
        checkpoint_extras=extras,
        time_budget=TimeBudget(config.train.max_seconds) if config.train.max_seconds else None,
        ranking_validation=ranking_validation,
    )
    if config.train.early_stopping_patience is not None:
        trainer.add_callback(EarlyStoppingCallback(config.train.early_stopping_patience))
    if trainer.args.should_save:
        # Leftovers of a crash while saving: never a valid checkpoint.
        shutil.rmtree(Path(config.train.output_dir) / STAGING_DIRNAME, ignore_errors=True)
    return trainer, resume


def train(config: Config, data: PreparedData | None = None) -> Path:
    """Train as configured; returns the ``final`` checkpoint directory."""
    trainer, resume = build_trainer(config, data)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    logger.info(
        "training %s of %s parameters (%.2f%%), %d dataset items (%s)",
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
        len(trainer.train_dataset),
        "packed rows" if isinstance(trainer.train_dataset, PackedDataset) else "examples",
    )
    trainer.train(resume_from_checkpoint=resume)
    budget = trainer.time_budget
    if budget is not None and budget.stopped_at is not None:
        logger.info(
            "train.max_seconds=%g reached: stopped after optimizer step %d of %d "
            "(max_steps=%d without the budget trains as many steps)",
            budget.max_seconds,
            budget.stopped_at,
            trainer.state.max_steps,
            budget.stopped_at,
        )
    if trainer.final_step() != trainer.state.global_step:
        logger.info(
            "load_best_model_at_end: final holds step %d (valid %s %.4f), the best of the "
            "checkpoints; training ran %d steps",
            trainer.final_step(),
            trainer.args.metric_for_best_model,
            trainer.state.best_metric,
            trainer.state.global_step,
        )
    return trainer.save_final()


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="recsysllm train", description="Train a RecSysLLM model from a YAML config."
    )
    parser.add_argument("--config", required=True, help="recipe YAML (configs/*.yaml)")
    # Added by the `deepspeed` launcher; the rank is read from the environment instead.
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="key=value overrides, e.g. train.learning_rate=1e-4 max_steps=10",
    )
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/train.py`` / ``recsysllm train``: parse, train, report the final checkpoint."""
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = load_config(args.config, args.overrides)
    final = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final checkpoint: {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
