"""Training: the Trainer paths that run on CPU, loss scaling, LoRA, resume, checkpoints, guards.

Tiny data is built in-process (:func:`tiny_tables`); the tokenizer is conftest's
``tiny_tokenizer`` saved to a directory. Subprocess tests (DeepSpeed, torchrun, SIGKILL)
run this file as a script: ``python tests/test_training.py CONFIG_JSON``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
sys.path.insert(0, str(TESTS_DIR))
sys.path.insert(0, str(REPO))

from conftest import TINY_TITLES  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from recsysllm.checkpoint_meta import CheckpointMismatchError, read_meta  # noqa: E402
from recsysllm.config import Config, apply_overrides, config_from_dict  # noqa: E402
from recsysllm.data.tables import RecTables  # noqa: E402
from recsysllm.modeling.glm.tokenization import GLMTokenizer  # noqa: E402
from recsysllm.packing import PackedDataset  # noqa: E402
from recsysllm.pipeline import (  # noqa: E402
    build_model,
    load_checkpoint_for_inference,
    prepare_from_tables,
    task_mixture,
)
from recsysllm.training import (  # noqa: E402
    ROW_GROUPS_KEY,
    STAGING_DIRNAME,
    NonFiniteLossError,
    build_trainer,
    check_candidate_prompts_fit,
    check_evaluation_prompts_fit,
    training_arguments,
    training_data,
)

NUM_ITEMS = 130  # direct candidates need 99 negatives the user never saw
GLM = {
    "hidden_size": 32,
    "num_layers": 2,
    "num_attention_heads": 4,
    "max_sequence_length": 128,
    "embedding_dropout_prob": 0.0,
    "attention_dropout_prob": 0.0,
    "output_dropout_prob": 0.0,
}


def tiny_tables(num_users: int = 12, per_user: int = 12) -> RecTables:
    """Users with an age feature, 130 movie-like items (all interacted), ratings, timestamps."""
    titles = [
        f"{TINY_TITLES[i % len(TINY_TITLES)].rsplit(' (', 1)[0]} ({1900 + i})"
        for i in range(NUM_ITEMS)
    ]
    items = datasets.Dataset.from_dict(
        {"item": [str(i) for i in range(NUM_ITEMS)], "title": titles}
    )
    rows: dict[str, list] = {
        k: [] for k in ("user", "item", "timestamp", "rating", "review", "summary")
    }
    for u in range(num_users):
        for j in range(per_user):
            rows["user"].append(f"u{u}")
            rows["item"].append(str((u * per_user + j) % NUM_ITEMS))
            rows["timestamp"].append(1_000_000 + 86_400 * (u + 2 * j))
            rows["rating"].append(float(1 + (u + j) % 5))
            rows["review"].append("")
            rows["summary"].append("")
    users = datasets.Dataset.from_dict(
        {
            "user": [f"u{u}" for u in range(num_users)],
            "age": ["25-34" if u % 2 else "18-24" for u in range(num_users)],
        }
    )
    return RecTables(
        name="tiny",
        interactions=datasets.Dataset.from_dict(rows),
        items=items,
        users=users,
        user_features={"age": "is {value} years old"},
    )


def tiny_config(output_dir: Path, tokenizer_dir: Path, overrides: list[str] = ()) -> Config:
    raw = {
        "model": {"from_scratch": dict(GLM)},
        "tokenizer": {"path": str(tokenizer_dir)},
        "lora": {"enabled": False},
        "data": {
            "max_length": 128,
            "k_core": 1,
            "mixture": {"rating": 1.0, "sequential": 1.0, "direct": 1.0, "pretrain": 1.0},
            "examples_per_epoch": 16,
            "history_budget": 5,
            "num_negatives": 2,  # 1 of 3 candidates: whole lists fit 128 tokens
            # Full titles: these tests compare against tiny_data's own (uncapped) catalog;
            # capped names are tests/test_item_names.py's.
            "item_name_max_tokens": None,
        },
        "train": {
            "output_dir": str(output_dir),
            "learning_rate": 1e-2,
            "per_device_batch_size": 4,
            "max_steps": 6,
            "save_steps": 3,
            "logging_steps": 1,
            "use_cpu": True,
            "seed": 3,
        },
    }
    return config_from_dict(apply_overrides(raw, list(overrides)), where="tiny test config")


@pytest.fixture(scope="module")
def tiny_data():
    return prepare_from_tables(
        tiny_tables(), tiny_config(Path("unused"), Path("unused")).data, seed=0
    )


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer.save_pretrained(directory)
    return directory


class LossRecorder(TrainerCallback):
    """Records the logged training loss of every step."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}
        self.eval_losses: dict[int, float] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses[state.global_step] = float(logs["loss"])
        if logs and "eval_loss" in logs:
            self.eval_losses[state.global_step] = float(logs["eval_loss"])


class Interrupt(Exception):
    """Stands for a crash at a chosen point of training."""


class CrashAfterSave(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupt(f"crash after saving step {self.step}")


def _train(config: Config, data, *callbacks) -> tuple[object, LossRecorder]:
    trainer, resume = build_trainer(config, data)
    recorder = LossRecorder()
    trainer.add_callback(recorder)
    for callback in callbacks:
        trainer.add_callback(callback)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, recorder


# --------------------------------------------------------------------------- single process


def test_single_process_training_learns_and_writes_loadable_checkpoints(
    tmp_path, tiny_data, tokenizer_dir
):
    overrides = ["max_steps=8", "train.save_total_limit=2", "train.eval_steps=4"]
    config = tiny_config(tmp_path / "run", tokenizer_dir, overrides)
    trainer, recorder = _train(config, tiny_data)
    final = trainer.save_final()
    losses = [recorder.losses[s] for s in sorted(recorder.losses)]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    # Validation loss on the valid split's seen prompts, every 4 steps: it falls too.
    assert sorted(recorder.eval_losses) == [4, 8]
    assert recorder.eval_losses[8] < recorder.eval_losses[4]
    # Checkpoints every 3 steps and at the end, the oldest rotated away; nothing staged left.
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["checkpoint-6", "checkpoint-8", "final"], names
    for directory in (tmp_path / "run" / "checkpoint-8", final):
        for name in (
            "model.safetensors",
            "config.yaml",
            "catalog.json",
            "candidates.json",
            "README.md",
        ):
            assert (directory / name).is_file(), (directory, name)
        assert (directory / "tokenizer").is_dir() and (directory / "prompts").is_dir()
        meta = read_meta(directory)
        assert meta.step == 8 and meta.lora is False and meta.catalog_hash == tiny_data.catalog.hash
    assert (tmp_path / "run" / "checkpoint-8" / "optimizer.pt").is_file()
    model, tokenizer, catalog, prompts, meta, loaded_config = load_checkpoint_for_inference(final)
    trained = {k: v for k, v in trainer.model.state_dict().items()}
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    assert catalog.hash == tiny_data.catalog.hash and prompts.hash == tiny_data.prompts.hash
    assert loaded_config == config


def _script_validation_losses(trainer, losses: dict[int, float]) -> None:
    """Replace the measured validation loss at each step by ``losses[step]`` (the Trainer,
    its best-checkpoint choice and its callbacks all read the replaced value)."""
    evaluation_loop = trainer.evaluation_loop

    def scripted(*args, **kwargs):
        output = evaluation_loop(*args, **kwargs)
        assert math.isfinite(output.metrics["eval_loss"])  # it did run
        output.metrics["eval_loss"] = losses[trainer.state.global_step]
        return output

    trainer.evaluation_loop = scripted


def _train_with_scripted_losses(run, tokenizer_dir, tiny_data, overrides, losses):
    """Train ``run`` with the validation loss at each step replaced by ``losses[step]``;
    return the trainer and the directory ``save_final`` wrote."""
    trainer, _ = build_trainer(tiny_config(run, tokenizer_dir, overrides), tiny_data)
    _script_validation_losses(trainer, losses)
    trainer.train()
    return trainer, trainer.save_final()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


BEST_AT_4 = {2: 3.0, 4: 1.0, 6: 2.0, 8: 2.5, 10: 0.5, 12: 0.4}
BY_LOSS = ["train.metric_for_best_model=loss", "train.eval_ranking_users=null"]
# Evaluate and save every 2 steps, choose the best checkpoint by the (scripted) loss.
BEST_BY_LOSS_EVERY_2 = [
    "train.eval_steps=2", "train.save_steps=2", "train.load_best_model_at_end=true", *BY_LOSS
]  # fmt: skip


class MetricRecorder(TrainerCallback):
    """Every metric of every evaluation, by step."""

    def __init__(self) -> None:
        self.metrics: dict[int, dict[str, float]] = {}

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.metrics[state.global_step] = dict(metrics)


def test_ranking_validation_logs_what_the_evaluation_reports_on_the_same_users(
    tmp_path, tiny_data, tokenizer_dir
):
    """The ranking metrics of an evaluation during training equal the ones computed by
    hand from the evaluation's ranks of the final weights, on a seeded sample of valid
    users drawn as ``recsysllm evaluate --limit`` draws it, yes/no templates left out."""
    import numpy as np

    from recsysllm.evaluation.evaluator import EvalProtocol, ModelRanker, evaluate, history_items
    from recsysllm.inference import Inference
    from recsysllm.pipeline import answer_budget

    overrides = ["max_steps=4", "train.eval_steps=4", "train.eval_ranking_users=5"]
    config = tiny_config(tmp_path / "run", tokenizer_dir, overrides)
    trainer, _ = build_trainer(config, tiny_data)
    recorder = MetricRecorder()
    trainer.add_callback(recorder)
    trainer.train()
    logged = recorder.metrics[4]
    assert math.isfinite(logged["eval_loss"])

    seed = config.data.evaluation_seed
    examples = tiny_data.tasks.examples("valid", ["sequential", "direct"], "seen", seed=seed)
    users = sorted({e.user for e in examples})
    picks = np.random.default_rng(seed).choice(len(users), size=5, replace=False)
    chosen = {users[i] for i in picks.tolist()}
    ranked = [e for e in examples if e.user in chosen and e.answer_type == "item"]
    assert {e.task for e in ranked} == {"sequential", "direct"}
    model, tokenizer, catalog, _, _, _ = load_checkpoint_for_inference(trainer.save_final())
    inference = Inference(
        model, tokenizer, catalog, max_length=config.data.max_length,
        answer_budget=answer_budget(config.data, catalog, tokenizer),
        renormalize=config.eval.renormalize,
    )  # fmt: skip
    protocol = EvalProtocol(history=history_items(tiny_data.splits, "valid"), seed=seed)
    results = evaluate(
        model, tokenizer, catalog, ranked, protocol=protocol, max_length=config.data.max_length,
        num_beams=config.eval.num_beams, progress=False,
        ranker=ModelRanker(inference, config.eval.num_beams),
    )  # fmt: skip
    ranks = {"": [], "all_items_": [], "candidates_": []}
    for outcome in results.outcomes:
        ranks[""].append(outcome.rank)
        ranks[outcome.variant + "_"].append(outcome.rank)
    assert ranks["all_items_"] and ranks["candidates_"]
    assert not any(key.startswith("eval_yesno") for key in logged)
    for name, values in ranks.items():
        for k in (1, 5, 10):
            hits = sum(1 for r in values if r is not None and r <= k) / len(values)
            gain = sum(1 / math.log2(r + 1) for r in values if r is not None and r <= k)
            assert logged[f"eval_{name}hr@{k}"] == pytest.approx(hits), (name, k)
            assert logged[f"eval_{name}ndcg@{k}"] == pytest.approx(gain / len(values)), (name, k)


def test_load_best_model_at_end_by_a_ranking_metric_keeps_its_best_evaluation(
    tmp_path, tiny_data, tokenizer_dir
):
    overrides = [
        "max_steps=8",
        "train.eval_steps=2",
        "train.save_steps=2",
        "train.eval_ranking_users=4",
        "train.metric_for_best_model=hr@10",
        "train.load_best_model_at_end=true",
    ]
    trainer, _ = build_trainer(tiny_config(tmp_path / "run", tokenizer_dir, overrides), tiny_data)
    recorder = MetricRecorder()
    trainer.add_callback(recorder)
    trainer.train()
    final = trainer.save_final()
    curve = {step: m["eval_hr@10"] for step, m in sorted(recorder.metrics.items())}
    assert sorted(curve) == [2, 4, 6, 8]
    best = max(curve, key=lambda step: (curve[step], -step))  # the first of equal maxima
    assert read_meta(final).step == best, curve
    expected = _weights(tmp_path / "run" / f"checkpoint-{best}")
    assert all(torch.equal(_weights(final)[k], expected[k]) for k in expected)


def test_load_best_model_at_end_writes_the_lowest_validation_loss_checkpoint_as_final(
    tmp_path, tiny_data, tokenizer_dir
):
    run = tmp_path / "run"
    overrides = ["max_steps=8", "train.save_total_limit=2", *BEST_BY_LOSS_EVERY_2]
    trainer, final = _train_with_scripted_losses(
        run, tokenizer_dir, tiny_data, overrides, BEST_AT_4
    )
    # Rotation keeps the newest checkpoint and the best one, however old.
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-4", "checkpoint-8", "final"]
    best = _weights(run / "checkpoint-4")
    last = _weights(run / "checkpoint-8")
    assert any(not torch.equal(best[k], last[k]) for k in best)  # steps 5-8 moved the weights
    written = _weights(final)
    assert written.keys() == best.keys()
    assert all(torch.equal(written[k], best[k]) for k in best)
    assert read_meta(final).step == 4 and trainer.state.global_step == 8
    # The state a resumed run reads names the published directory, not the staging one.
    state = json.loads((run / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(run / "checkpoint-4")
    assert state["best_global_step"] == 4 and state["best_metric"] == 1.0


def test_early_stopping_stops_after_patience_evaluations_without_a_lower_loss(
    tmp_path, tiny_data, tokenizer_dir
):
    overrides = ["max_steps=12", *BEST_BY_LOSS_EVERY_2, "train.early_stopping_patience=2"]
    trainer, final = _train_with_scripted_losses(
        tmp_path / "run", tokenizer_dir, tiny_data, overrides, BEST_AT_4
    )
    # Steps 6 and 8 do not beat step 4: training ends at 8, before the lower losses of 10/12.
    assert trainer.state.global_step == 8
    assert read_meta(final).step == 4
    best = _weights(tmp_path / "run" / "checkpoint-4")
    assert all(torch.equal(_weights(final)[k], best[k]) for k in best)


class GradientCapture(TrainerCallback):
    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {
                n: p.grad.detach().clone()
                for n, p in model.named_parameters()
                if p.grad is not None
            }


def test_gradient_accumulation_follows_the_token_mean_of_the_whole_step(
    tmp_path, tiny_data, tokenizer_dir
):
    """2 micro-batches of 2 examples == the model's mean loss over the 4 examples' labelled tokens."""
    overrides = [
        "train.per_device_batch_size=2",
        "train.gradient_accumulation_steps=2",
        "train.max_grad_norm=0.0",
        "data.packing=false",
        "max_steps=1",
        "data.seed=3",
    ]
    config = tiny_config(tmp_path / "run", tokenizer_dir, overrides)
    trainer, _ = build_trainer(config, tiny_data)
    capture = GradientCapture()
    trainer.add_callback(capture)
    # The reference: a fresh copy of the initial model on the 4 examples as one batch.
    reference, _ = build_trainer(tiny_config(tmp_path / "ref", tokenizer_dir, overrides), tiny_data)
    items = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(items)
    del batch["batch_examples"]
    model = reference.model
    model.train()
    model(**batch).loss.backward()
    expected = {n: p.grad for n, p in model.named_parameters()}

    micro = [trainer.data_collator(items[:2])["labels"], trainer.data_collator(items[2:])["labels"]]
    counts = [int((labels != -100).sum()) for labels in micro]
    assert counts[0] != counts[1], "pick data whose micro-batches differ in labelled tokens"

    trainer.train()
    assert capture.grads is not None and set(capture.grads) == set(expected)
    for name, grad in capture.grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    # The naive mean of the two micro-batch means would differ measurably.
    with torch.no_grad():
        halves = [
            model(
                **{k: v for k, v in trainer.data_collator(part).items() if k != "batch_examples"}
            ).loss
            for part in (items[:2], items[2:])
        ]
        full = model(**batch).loss
    assert abs((halves[0] + halves[1]) / 2 - full) > 1e-3


def test_resume_reaches_the_same_losses_as_an_uninterrupted_run(tmp_path, tiny_data, tokenizer_dir):
    _, uninterrupted = _train(tiny_config(tmp_path / "a", tokenizer_dir), tiny_data)
    config = tiny_config(tmp_path / "b", tokenizer_dir)
    with pytest.raises(Interrupt):
        _train(config, tiny_data, CrashAfterSave(3))
    assert (tmp_path / "b" / "checkpoint-3").is_dir() and not (
        tmp_path / "b" / "checkpoint-6"
    ).exists()
    _, resumed = _train(
        tiny_config(tmp_path / "b", tokenizer_dir, ["train.resume=latest"]), tiny_data
    )
    assert sorted(resumed.losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed.losses[step] == pytest.approx(uninterrupted.losses[step], abs=1e-3), step


def _record_batches(trainer) -> list[list[str]]:
    """Example identities of every micro-batch the trainer computes a loss on, in order."""
    seen: list[list[str]] = []
    compute_loss = trainer.compute_loss

    def recording(model, inputs, *args, **kwargs):
        seen.append(list(inputs["batch_examples"]))
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = recording
    return seen


def test_packed_rows_resume_mid_epoch_with_the_identical_remaining_rows(
    tmp_path, tiny_data, tokenizer_dir
):
    # 32 examples over two epochs, 2 rows per step: 3 steps end mid-way through epoch 0.
    overrides = [
        "data.examples_per_epoch=16",
        "train.epochs=2",
        "train.per_device_batch_size=2",
        "data.packing_window=6",
        "max_steps=6",
    ]
    trainer, _ = build_trainer(tiny_config(tmp_path / "a", tokenizer_dir, overrides), tiny_data)
    assert isinstance(trainer.train_dataset, PackedDataset)
    rows = trainer.train_dataset.rows
    assert sorted(i for row in rows for i in row) == list(range(32))
    assert any(len(row) > 1 for row in rows)
    uninterrupted = _record_batches(trainer)
    trainer.train()
    assert len(uninterrupted) == 6

    config = tiny_config(tmp_path / "b", tokenizer_dir, overrides)
    trainer, _ = build_trainer(config, tiny_data)
    trainer.add_callback(CrashAfterSave(3))
    first = _record_batches(trainer)
    with pytest.raises(Interrupt):
        trainer.train()
    assert first == uninterrupted[:3]
    trainer, resume = build_trainer(
        tiny_config(tmp_path / "b", tokenizer_dir, [*overrides, "train.resume=latest"]), tiny_data
    )
    assert resume.endswith("checkpoint-3")
    resumed = _record_batches(trainer)
    trainer.train(resume_from_checkpoint=resume)
    assert resumed == uninterrupted[3:]


def test_a_batch_of_rows_across_an_epoch_end_keeps_each_examples_own_masks(
    tmp_path, tiny_data, tokenizer_dir
):
    overrides = ["data.examples_per_epoch=16", "train.epochs=2", "data.packing_window=16"]
    config = tiny_config(tmp_path / "run", tokenizer_dir, overrides)
    tokenizer = GLMTokenizer.from_pretrained(tokenizer_dir)
    dataset, collate = training_data(config, tiny_data, tokenizer, task_mixture(config.data))
    epochs = [{item.epoch for item in dataset[i]} for i in range(len(dataset))]
    assert all(len(e) == 1 for e in epochs)
    alone = copy.copy(collate.collator)

    def encoded(item, epoch: int):
        alone.set_epoch(epoch)
        return alone.encode(item.tokenized)

    # The last row of epoch 0, then a row of epoch 1 holding a document whose masks
    # differ between the epochs (as the Trainer's last batch of epoch 0 may do).
    first = max(i for i in range(len(dataset)) if epochs[i] == {0})
    second = next(
        i
        for i in range(len(dataset))
        if epochs[i] == {1}
        and any(encoded(it, 1).part_a_ids != encoded(it, 0).part_a_ids for it in dataset[i])
    )
    batch = collate([dataset[first], dataset[second]])
    items = [*dataset[first], *dataset[second]]
    for item, (row, start, length) in zip(items, collate.collator.last_placement, strict=True):
        expected = encoded(item, item.epoch)
        assert length == expected.length
        got = batch["input_ids"][row, start : start + expected.part_a_length].tolist()
        assert got == expected.part_a_ids


def test_packed_rows_keep_every_examples_loss(tmp_path, tiny_data, tokenizer_dir):
    """Per-example summed cross-entropy: packed rows of the training path == each example alone."""
    # Rows of 256 for examples of at most 128: several examples share a row.
    config = tiny_config(tmp_path / "run", tokenizer_dir, ["data.packing_row_length=256"])
    trainer, _ = build_trainer(config, tiny_data)
    dataset = trainer.train_dataset
    rows = [dataset[i] for i in range(len(dataset)) if len(dataset.rows[i]) > 1][:3]
    rows.append(dataset[0])
    assert len(rows) >= 2 and len(rows[0]) > 1  # rows of several examples, and one more
    batch = trainer.data_collator(rows)
    placement = list(trainer.data_collator.collator.last_placement)
    items = [item for row in rows for item in row]
    del batch["batch_examples"]
    model = trainer.model.eval()

    def token_losses(inputs: dict) -> torch.Tensor:
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        return torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), inputs["labels"], ignore_index=-100, reduction="none"
        )

    with torch.no_grad():
        packed = token_losses(batch)
        for item, (row, start, length) in zip(items, placement, strict=True):
            alone = trainer.data_collator([item])
            del alone["batch_examples"]
            assert alone["input_ids"].shape[0] == 1
            expected = token_losses(alone)[0, :length].sum()
            got = packed[row, start : start + length].sum()
            assert expected > 0
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_rows_shorter_than_max_length_pack_short_examples_and_train(tmp_path, tokenizer_dir):
    """data.packing_row_length < max_length: short examples share rows of that length,
    longer ones (up to max_length) get a row each, and training runs on them."""
    config = tiny_config(
        tmp_path / "run",
        tokenizer_dir,
        ["data.packing_row_length=96", "data.history_budget=1", "max_steps=2"],
    )
    # One history item: examples short enough for several to share a row.
    trainer, _ = build_trainer(config, prepare_from_tables(tiny_tables(), config.data, seed=0))
    dataset = trainer.train_dataset
    collator = trainer.data_collator.collator
    lengths = []
    for index in range(len(dataset)):
        row = dataset[index]
        lengths.append([collator.encode(item.tokenized).length for item in row])
    assert any(len(row) > 1 for row in lengths)  # shared rows
    assert any(sum(row) > 96 for row in lengths)  # and a long example alone
    for row in lengths:
        assert sum(row) <= 96 or len(row) == 1
        assert max(row) <= 128
    trainer.train()
    assert trainer.state.global_step == 2


@pytest.mark.parametrize("renormalize", [False, True])
def test_wide_rows_run_apart_with_the_loss_and_gradients_of_the_padded_batch(
    tmp_path, tokenizer_dir, renormalize
):
    """A batch of short packed rows and a long example alone in its row: the trainer
    runs each group at its own width (not every row at the long one's), and the loss
    and gradients equal those of the whole padded batch, with and without Trainer's
    count of labelled tokens and with the trie-restricted loss's per-token sets."""
    overrides = ["data.packing_row_length=96", "data.history_budget=1"]
    if renormalize:
        overrides.append("train.renormalize=[all_items, candidates]")
    config = tiny_config(tmp_path / "run", tokenizer_dir, overrides)
    trainer, _ = build_trainer(config, prepare_from_tables(tiny_tables(), config.data, seed=0))
    dataset, collator = trainer.train_dataset, trainer.data_collator
    shared = [dataset[i] for i in range(len(dataset)) if len(dataset.rows[i]) > 1][:3]
    encode = collator.collator.encode
    wide = [
        dataset[i]
        for i in range(len(dataset))
        if len(dataset.rows[i]) == 1 and encode(dataset[i][0].tokenized).length > 96
    ][:2]
    assert shared and wide
    rows = [shared[0], wide[0], *shared[1:], *wide[1:]]
    collator.collator.pad_to_multiple_of = 32
    batch = collator(rows)
    lengths = collator.collator.last_row_lengths
    groups = batch[ROW_GROUPS_KEY]
    assert [rows for rows, _ in groups] == [
        [r for r, n in enumerate(lengths) if n <= 96],
        [r for r, n in enumerate(lengths) if n > 96],
    ]
    # Group widths padded to the collator's multiple (32 here): 96 for the shared rows,
    # the batch's own 128 for the rest.
    assert [width for _, width in groups] == [96, 128] == [96, batch["input_ids"].shape[1]]
    assert ("label_allowed" in batch) == renormalize
    model = trainer.model.train()
    labelled = int((batch["labels"] != -100).sum())

    def loss_and_grads(inputs: dict, count) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(inputs), num_items_in_batch=count)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    seen_widths = []
    forward = model.forward

    def recording(*args, **kwargs):
        seen_widths.append(kwargs["input_ids"].shape[1])
        return forward(*args, **kwargs)

    padded = {k: v for k, v in batch.items() if k != ROW_GROUPS_KEY}
    for count in (None, torch.tensor(labelled * 2)):
        whole, whole_grads = loss_and_grads(padded, count)
        model.forward = recording
        try:
            split, split_grads = loss_and_grads(batch, count)
        finally:
            model.forward = forward
        assert seen_widths[-2:] == [width for _, width in groups]
        torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-6)
        assert len(split_grads) == len(whole_grads)
        for got, expected in zip(split_grads, whole_grads, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    # Rows all short (or all long): one group, no split.
    assert ROW_GROUPS_KEY not in collator(shared)


def test_position_offsets_reach_the_training_batches(tmp_path, tiny_data, tokenizer_dir):
    """data.position_offsets: the Trainer's batches start examples at shifted inter
    positions, within the model's table; off, every example starts at 0."""
    starts = {}
    for flag in (False, True):
        config = tiny_config(
            tmp_path / f"run{flag}", tokenizer_dir, [f"data.position_offsets={str(flag).lower()}"]
        )
        trainer, _ = build_trainer(config, tiny_data)
        rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
        batch = trainer.data_collator(rows)
        placement = trainer.data_collator.collator.last_placement
        starts[flag] = [int(batch["position_ids"][row, 0, start]) for row, start, _ in placement]
        assert int(batch["position_ids"][:, 0].max()) < config.data.max_length
    assert set(starts[False]) == {0}
    assert len(set(starts[True])) > len(starts[True]) // 2  # offsets, not a constant


def test_training_runs_the_head_on_labelled_positions_only(tmp_path, tiny_data, tokenizer_dir):
    trainer, _ = build_trainer(
        tiny_config(tmp_path / "run", tokenizer_dir, ["max_steps=2"]), tiny_data
    )
    labelled: list[int] = []
    compute_loss = trainer.compute_loss

    def recording(model, inputs, *args, **kwargs):
        labelled.append(int((inputs["labels"] != -100).sum()))
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = recording
    head_rows: list[int] = []
    trainer.model.lm_head.register_forward_hook(
        lambda module, args, out: head_rows.append(args[0].shape[0])
    )
    trainer.train()
    assert len(labelled) == 2
    # Forward + the backward's recomputation, labelled rows only (one chunk each here).
    assert head_rows == [labelled[0], labelled[0], labelled[1], labelled[1]]


def test_trie_restricted_item_loss_reaches_the_model_from_the_config(
    tmp_path, tiny_data, tokenizer_dir
):
    """train.renormalize: every batch carries label_allowed; item answers' rows hold the
    catalog's or the prompt's allowed ids (label included), the rest are unrestricted,
    and the trainer's loss is the restricted one."""
    config = tiny_config(
        tmp_path / "run",
        tokenizer_dir,
        ["max_steps=4", "train.renormalize=[all_items, candidates]"],
    )
    trainer, _ = build_trainer(config, tiny_data)
    seen: list[tuple[torch.Tensor, torch.Tensor, float, float]] = []
    compute_loss = trainer.compute_loss

    def recording(model, inputs, *args, **kwargs):
        loss = compute_loss(model, inputs, *args, **kwargs)
        with torch.no_grad():
            plain = {k: v for k, v in inputs.items() if k not in ("labels", "label_allowed")}
            logits = model(**plain).logits[inputs["labels"] != -100].float()
        labels = inputs["labels"][inputs["labels"] != -100]
        expected = 0.0
        for row, ids in enumerate(inputs["label_allowed"].tolist()):
            ids = [i for i in ids if i >= 0] or list(range(logits.shape[1]))
            expected -= (logits[row, labels[row]] - logits[row, ids].logsumexp(0)).item()
        seen.append((labels, inputs["label_allowed"], loss.item(), expected / len(labels)))
        return loss

    trainer.compute_loss = recording
    trainer.train()
    assert len(seen) == 4
    flags = torch.cat([(allowed >= 0).any(1) for _, allowed, _, _ in seen])
    assert flags.any() and not flags.all()  # item answers and the rest
    widths = torch.cat([(allowed >= 0).sum(1) for _, allowed, _, _ in seen])
    assert int(widths.max()) > 1  # a first title token: a real choice
    for labels, allowed, loss, expected in seen:
        assert allowed.shape[0] == len(labels)
        restricted = (allowed >= 0).any(1)
        for label, ids in zip(
            labels[restricted].tolist(), allowed[restricted].tolist(), strict=True
        ):
            assert label in ids
        assert loss == pytest.approx(expected, rel=1e-4)


def test_flex_attention_config_feeds_intervals_to_a_flex_model(tmp_path, tiny_data, tokenizer_dir):
    overrides = ["model.attention_implementation=flex", "train.use_cpu=false"]
    config = tiny_config(tmp_path / "run", tokenizer_dir, overrides)
    tokenizer = GLMTokenizer.from_pretrained(tokenizer_dir)
    dataset, collate = training_data(config, tiny_data, tokenizer, task_mixture(config.data))
    batch = collate([dataset[0], dataset[1]])
    assert "attention_mask" not in batch and batch["attention_intervals"].shape[1] == 2
    built = build_model(config.model, config.lora, tokenizer)
    assert built.model.config.attention_implementation == "flex"
    with pytest.raises(ValueError, match="'flex' trains on CUDA only"):
        tiny_config(tmp_path / "cpu", tokenizer_dir, ["model.attention_implementation=flex"])


@pytest.mark.parametrize("every", [1, 2, 3])
def test_selective_checkpointing_recomputes_every_kth_block_with_equal_gradients(
    tmp_path, tiny_data, tokenizer_dir, every
):
    overrides = ["max_steps=1", "train.max_grad_norm=0.0"]
    glm = {**GLM, "num_layers": 4}

    def run(name: str, extra: list[str]) -> tuple[list[int], dict[str, torch.Tensor]]:
        config = tiny_config(tmp_path / name, tokenizer_dir, [*overrides, *extra])
        config.model.from_scratch = dict(glm)
        trainer, _ = build_trainer(config, tiny_data)
        calls = [0] * 4
        for index, block in enumerate(trainer.model.glm.transformer.layers):
            # A submodule: the block's own hooks stay outside transformers' checkpoint.
            block.attention.register_forward_hook(
                lambda module, args, out, index=index: calls.__setitem__(index, calls[index] + 1)
            )
        capture = GradientCapture()
        trainer.add_callback(capture)
        trainer.train()
        return calls, capture.grads

    plain_calls, plain = run("plain", [])
    calls, checkpointed = run(
        "selective",
        ["train.gradient_checkpointing=true", f"train.gradient_checkpointing_every={every}"],
    )
    assert plain_calls == [1, 1, 1, 1]
    # Blocks 0, k, 2k, ... run again in backward; the others keep their activations.
    assert calls == [2 if index % every == 0 else 1 for index in range(4)]
    assert set(checkpointed) == set(plain)
    for name, grad in checkpointed.items():
        torch.testing.assert_close(grad, plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_compile_blocks_compiles_every_transformer_block(tmp_path, tiny_data, tokenizer_dir):
    config = tiny_config(tmp_path / "run", tokenizer_dir, ["train.compile_blocks=true"])
    trainer, _ = build_trainer(config, tiny_data)
    blocks = list(trainer.model.glm.transformer.layers)
    assert len(blocks) == GLM["num_layers"]
    assert all(block._compiled_call_impl is not None for block in blocks)
    plain, _ = build_trainer(tiny_config(tmp_path / "plain", tokenizer_dir), tiny_data)
    assert all(block._compiled_call_impl is None for block in plain.model.glm.transformer.layers)


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, tiny_data, tokenizer_dir):
    config = tiny_config(tmp_path / "run", tokenizer_dir)
    trainer, _ = build_trainer(config, tiny_data)
    write_extras = trainer.checkpoint_extras

    def crash_on_second_save(directory: Path, step: int) -> None:
        write_extras(directory, step)
        if step == 6:
            raise Interrupt("disk full")

    trainer.checkpoint_extras = crash_on_second_save
    with pytest.raises(Interrupt):
        trainer.train()
    run = tmp_path / "run"
    assert not (run / "checkpoint-6").exists()
    assert (run / STAGING_DIRNAME / "checkpoint-6").is_dir()  # the half-finished write
    model, *_ = load_checkpoint_for_inference(run / "checkpoint-3")
    assert read_meta(run / "checkpoint-3").step == 3
    # A new run cleans the staging area and resumes from checkpoint-3.
    _, resume = build_trainer(tiny_config(run, tokenizer_dir, ["train.resume=latest"]), tiny_data)
    assert resume == str(run / "checkpoint-3") and not (run / STAGING_DIRNAME).exists()


class PoisonWeights(TrainerCallback):
    """Turns a weight into NaN at the start of step 5 (after checkpoint-4 was saved)."""

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 4:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


def test_non_finite_loss_stops_with_step_and_batch_identity(
    tmp_path, tiny_data, tokenizer_dir, caplog
):
    config = tiny_config(tmp_path / "run", tokenizer_dir, ["train.save_steps=2"])
    with pytest.raises(NonFiniteLossError) as info:
        _train(config, tiny_data, PoisonWeights())
    message = str(info.value)
    assert (
        "step 5" in message and "task=" in message and "template=" in message and "user=" in message
    )
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    model, *_ = load_checkpoint_for_inference(run / "checkpoint-4")
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --------------------------------------------------------------------------- LoRA


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_data, tokenizer_dir, tiny_glm_config_module):
    from recsysllm.modeling import GLMForConditionalGeneration

    root = tmp_path_factory.mktemp("lora")
    for seed, name in ((0, "base"), (1, "other_base")):
        torch.manual_seed(seed)
        GLMForConditionalGeneration(tiny_glm_config_module).save_pretrained(root / name)
    overrides = [
        f"model.base_model={root / 'base'}",
        "model.from_scratch=null",
        "lora.enabled=true",
        "lora.r=4",
        "lora.dropout=0.0",
        "max_steps=3",
        "train.save_steps=3",
    ]
    config = tiny_config(root / "run", tokenizer_dir, overrides)
    trainer, _ = build_trainer(config, tiny_data)
    capture = GradientCapture()
    trainer.add_callback(capture)
    trainer.train()
    return {"root": root, "trainer": trainer, "grads": capture.grads, "overrides": overrides}


@pytest.fixture(scope="module")
def tiny_glm_config_module():
    from recsysllm.modeling import GLMConfig

    return GLMConfig(vocab_size=320, **GLM)


def test_lora_trains_only_adapters_and_leaves_the_base_bit_identical(lora_run):
    from recsysllm.modeling import load_glm_checkpoint

    grads = lora_run["grads"]
    assert grads and all("lora_" in name for name in grads)
    for module in ("query_key_value", "attention.dense", "dense_h_to_4h", "dense_4h_to_h"):
        assert any(module in name and "lora_B" in name for name in grads), module
    model = lora_run["trainer"].model
    saved = load_glm_checkpoint(lora_run["root"] / "base").state_dict()
    live = {
        name.removeprefix("base_model.model.").replace(".base_layer.", "."): p
        for name, p in model.named_parameters()
        if "lora_" not in name
    }
    assert live and all(not p.requires_grad for p in live.values())
    for name, p in live.items():
        assert torch.equal(p.detach(), saved[name]), name
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: it moved
    checkpoint = lora_run["root"] / "run" / "checkpoint-3"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert not (checkpoint / "model.safetensors").exists()
    assert read_meta(checkpoint).lora


def test_load_best_model_at_end_restores_the_best_adapter(lora_run, tiny_data, tokenizer_dir):
    from safetensors.torch import load_file

    overrides = [*lora_run["overrides"], "max_steps=6", *BEST_BY_LOSS_EVERY_2]
    run = lora_run["root"] / "best_run"
    _, final = _train_with_scripted_losses(
        run, tokenizer_dir, tiny_data, overrides, {2: 2.0, 4: 1.0, 6: 3.0}
    )
    best = load_file(str(run / "checkpoint-4" / "adapter_model.safetensors"))
    last = load_file(str(run / "checkpoint-6" / "adapter_model.safetensors"))
    written = load_file(str(final / "adapter_model.safetensors"))
    assert any(not torch.equal(best[k], last[k]) for k in best)
    assert written.keys() == best.keys() and all(torch.equal(written[k], best[k]) for k in best)
    assert read_meta(final).step == 4 and read_meta(final).lora


def test_resume_on_a_different_base_model_is_refused(lora_run, tiny_data, tokenizer_dir):
    root = lora_run["root"]
    overrides = [
        *lora_run["overrides"],
        f"model.base_model={root / 'other_base'}",
        "train.resume=latest",
    ]
    with pytest.raises(CheckpointMismatchError, match="base model differs"):
        build_trainer(tiny_config(root / "run", tokenizer_dir, overrides), tiny_data)
    with pytest.raises(CheckpointMismatchError, match="base model differs"):
        load_checkpoint_for_inference(
            root / "run" / "checkpoint-3", base_model=str(root / "other_base")
        )


def test_resume_with_other_item_names_says_which_setting_renamed_them(
    lora_run, tiny_data, tokenizer_dir
):
    """The run trained on full titles (as runs did before the default cap); a cap of 6
    cuts them, so the catalog differs and the refusal names the setting that restores it."""
    root = lora_run["root"]
    overrides = [*lora_run["overrides"], "data.item_name_max_tokens=6", "train.resume=latest"]
    config = tiny_config(root / "run", tokenizer_dir, overrides)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"entity catalog differs.*set data\.item_name_max_tokens: null to resume it",
    ):
        build_trainer(config, tiny_data)


def test_a_max_length_past_the_glm_position_table_is_refused_before_training(
    tmp_path, tiny_data, tokenizer_dir
):
    """A recipe adapted to longer prompts (data.max_length raised, the from-scratch
    table not) used to fail in the first forward pass as "index out of range"."""
    from types import SimpleNamespace

    from recsysllm.pipeline import check_position_table

    config = tiny_config(tmp_path, tokenizer_dir, ["data.max_length=160"])  # table: 128
    with pytest.raises(
        ValueError,
        match=r"data\.max_length is 160 but the model's position tables hold 128 .*"
        r"model\.from_scratch\.max_sequence_length",
    ):
        build_trainer(config, tiny_data)
    check_position_table(SimpleNamespace(max_sequence_length=128), 128)  # exactly fits
    check_position_table(SimpleNamespace(max_position_embeddings=64), 4096)  # rotary: no limit


def test_item_naming_differences_name_what_restores_the_checkpoints_names():
    from recsysllm.config import DataArgs
    from recsysllm.training import item_naming_differences

    default = DataArgs()
    full_titles = DataArgs(item_name_max_tokens=None)
    numbered = DataArgs(item_name_max_tokens=8, item_name_disambiguation="number")
    assert item_naming_differences(default, DataArgs()) == []
    assert item_naming_differences(default, full_titles) == ["data.item_name_max_tokens: null"]
    # Without a cap nothing was told apart: the disambiguation does not matter.
    uncapped_numbered = DataArgs(item_name_max_tokens=None, item_name_disambiguation="number")
    assert item_naming_differences(uncapped_numbered, full_titles) == []
    assert item_naming_differences(default, numbered) == [
        "data.item_name_max_tokens: 8",
        "data.item_name_disambiguation: number",
    ]


def test_loading_a_lora_checkpoint_merges_the_adapter(lora_run, tiny_data):
    checkpoint = lora_run["root"] / "run" / "checkpoint-3"
    model, *_ = load_checkpoint_for_inference(checkpoint)
    trainer = lora_run["trainer"]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    del batch["batch_examples"]
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(**batch).logits
        found = model(**batch).logits
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-4)


def test_init_adapter_continues_from_a_trained_adapter(lora_run, tiny_data, tokenizer_dir):
    """`lora.init_adapter` starts from the saved adapter's weights, trainable, on the same
    base; on another base it is refused."""
    from safetensors.torch import load_file

    from recsysllm.pipeline import build_model

    root = lora_run["root"]
    adapter_dir = root / "run" / "checkpoint-3"
    saved = load_file(adapter_dir / "adapter_model.safetensors")
    overrides = [*lora_run["overrides"], f"lora.init_adapter={adapter_dir}"]
    config = tiny_config(root / "downstream", tokenizer_dir, overrides)
    tokenizer = GLMTokenizer.from_pretrained(tokenizer_dir)
    built = build_model(config.model, config.lora, tokenizer)
    live = {name: p for name, p in built.model.named_parameters() if "lora_" in name}
    assert live and all(p.requires_grad for p in live.values())
    assert not any(p.requires_grad for n, p in built.model.named_parameters() if "lora_" not in n)
    # peft stores adapter keys without the adapter name ("default"); compare by that name.
    for name, tensor in saved.items():
        live_name = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight"
        )
        assert torch.equal(live[live_name].detach(), tensor), name
    other = tiny_config(
        root / "downstream_other",
        tokenizer_dir,
        [*overrides, f"model.base_model={root / 'other_base'}"],
    )
    with pytest.raises(CheckpointMismatchError, match="base model differs"):
        build_model(other.model, other.lora, tokenizer)


def test_candidate_fit_check_covers_only_the_trained_templates(
    tmp_path, tiny_data, tiny_tokenizer, tokenizer_dir
):
    """At 40 tokens no 1-of-3 list fits; leaving the candidate templates out passes."""
    mixture = ["data.mixture={sequential: 1, direct: 1}", "data.max_length=40"]
    config = tiny_config(tmp_path, tokenizer_dir, mixture)
    with pytest.raises(ValueError, match=r"template 'direct-3' needs \d+ tokens"):
        check_candidate_prompts_fit(config, tiny_data, tiny_tokenizer)
    listed = tiny_config(
        tmp_path, tokenizer_dir, [*mixture, "data.train_templates=[sequential-1, direct-1]"]
    )
    check_candidate_prompts_fit(listed, tiny_data, tiny_tokenizer)  # no candidate template
    with_one = tiny_config(
        tmp_path, tokenizer_dir, [*mixture, "data.train_templates=[sequential-1, direct-4]"]
    )
    with pytest.raises(ValueError, match=r"template 'direct-4' needs") as info:
        check_candidate_prompts_fit(with_one, tiny_data, tiny_tokenizer)
    assert "direct-3" not in str(info.value)


def test_evaluation_fit_check_reads_both_splits_lists_under_the_evaluated_templates(
    tmp_path, tiny_data, tiny_tokenizer, tokenizer_dir, monkeypatch
):
    """The lists `recsysllm evaluate` would refuse are refused before training.

    A test list once needed 710 tokens with a recipe of max_length 704 whose training
    check (valid lists, trained templates) passed: the evaluation after training
    refused it. Here both splits are read, with the config's eval.families/prompts.
    """
    short = tiny_config(tmp_path, tokenizer_dir, ["data.max_length=40"])
    with pytest.raises(ValueError, match=r"evaluation of the valid split .*template 'direct-\d+' needs \d+ tokens"):  # fmt: skip
        check_evaluation_prompts_fit(short, tiny_data, tiny_tokenizer)
    # Families without candidate lists have nothing to refuse.
    rating_only = tiny_config(tmp_path, tokenizer_dir, ["data.max_length=40", "eval.families=[rating]"])  # fmt: skip
    check_evaluation_prompts_fit(rating_only, tiny_data, tiny_tokenizer)
    # Both splits, under the evaluated families and prompt set, with the evaluation seed.
    calls = []
    real = tiny_data.tasks.examples

    def spy(split, families=None, prompts="seen", seed=0):
        calls.append((split, tuple(families), prompts, seed))
        return real(split, families, prompts=prompts, seed=seed)

    monkeypatch.setattr(tiny_data.tasks, "examples", spy)
    config = tiny_config(tmp_path, tokenizer_dir, ["eval.families=[direct, rating]", "eval.prompts=unseen"])  # fmt: skip
    check_evaluation_prompts_fit(config, tiny_data, tiny_tokenizer)
    seed = config.data.evaluation_seed
    assert calls == [("valid", ("direct",), "unseen", seed), ("test", ("direct",), "unseen", seed)]
    # Each split's lists go to the fit check under the split's own name.
    import recsysllm.training as training_module

    wheres = []
    monkeypatch.setattr(training_module, "check_prompts_fit", lambda *a, where="": wheres.append(where))  # fmt: skip
    check_evaluation_prompts_fit(config, tiny_data, tiny_tokenizer)
    assert [w.split(" (")[0] for w in wheres] == [
        "evaluation of the valid split",
        "evaluation of the test split",
    ]


class LearningRates(TrainerCallback):
    """The optimizer's learning rate at the end of every step."""

    def __init__(self) -> None:
        self.rates: dict[int, float] = {}

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.rates[state.global_step] = optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant", "constant_with_warmup"])
def test_budget_schedule_without_elapsed_time_is_transformers_schedule(schedule):
    from transformers import get_scheduler

    from recsysllm.training import TimeBudget, budget_lr_lambda

    budget = TimeBudget(max_seconds=1e9)
    ours = budget_lr_lambda(schedule, warmup=4, total=20, budget=budget)
    parameter = torch.nn.Parameter(torch.zeros(1))
    reference = get_scheduler(
        schedule,
        torch.optim.SGD([parameter], lr=1.0),
        num_warmup_steps=4,
        num_training_steps=20,
    )
    expected = [reference.lr_lambdas[0](step) for step in range(21)]
    assert [ours(step) for step in range(21)] == pytest.approx(expected)


def test_budget_schedule_follows_whichever_of_time_and_steps_is_further():
    from recsysllm.training import TimeBudget, budget_lr_lambda

    budget = TimeBudget(max_seconds=100.0)
    cosine = budget_lr_lambda("cosine", warmup=2, total=102, budget=budget)
    linear = budget_lr_lambda("linear", warmup=2, total=102, budget=budget)
    budget.fraction = 0.5  # half the time spent at step 12 (a tenth of the steps)
    assert cosine(12) == pytest.approx(0.5)  # cos(pi / 2): half way by time
    assert linear(12) == pytest.approx(0.5)
    assert linear(1) == pytest.approx(0.5)  # warmup is by steps: 1 of 2
    assert linear(82) == pytest.approx(0.2)  # steps (0.8) ahead of time (0.5)
    budget.fraction = 1.3  # past the budget: the schedule's end, not beyond it
    assert cosine(20) == pytest.approx(0.0) and linear(20) == pytest.approx(0.0)


def test_time_budget_stops_training_and_decays_the_learning_rate_within_it(
    tmp_path, tiny_data, tokenizer_dir
):
    ticks = iter(range(1000))  # a clock that advances 10 s at every reading

    config = tiny_config(
        tmp_path,
        tokenizer_dir,
        ["train.max_seconds=45", "max_steps=50", "train.lr_schedule=linear", "train.save_steps=3"],
    )
    trainer, _ = build_trainer(config, tiny_data)
    trainer.time_budget.clock = lambda: 10.0 * next(ticks)
    rates = LearningRates()
    trainer.add_callback(rates)
    trainer.train()
    # Begin reads 0; step k ends at 10 k s: step 5 is the first at or past 45 s.
    assert trainer.time_budget.stopped_at == 5 and trainer.state.global_step == 5
    # Learning rate of step k + 1 (set after step k): 1e-2 x (1 - progress), progress the
    # larger of step k's share of 50 steps and the time read at the end of step k - 1.
    expected = {k: 1e-2 * (1 - max(10 * (k - 1) / 45, k / 50)) for k in range(1, 6)}
    assert rates.rates == pytest.approx(expected)
    assert (tmp_path / "checkpoint-3" / "scheduler.pt").is_file()  # the schedule pickles
    final = trainer.save_final()
    assert read_meta(final).step == 5
    # The configuration: a budget must be positive and cannot resume.
    with pytest.raises(ValueError, match="train.max_seconds: must be > 0"):
        tiny_config(tmp_path, tokenizer_dir, ["train.max_seconds=0"])
    with pytest.raises(ValueError, match="train.max_seconds: cannot be combined with train.resume"):
        tiny_config(tmp_path, tokenizer_dir, ["train.max_seconds=10", "train.resume=latest"])


def _budget_rank(rank: int, init_file: str, results: str) -> None:
    """One of two gloo ranks whose clocks differ: rank 0 reads 10 s, rank 1 30 s."""
    from types import SimpleNamespace

    from transformers import TrainerControl

    from recsysllm.training import TimeBudget

    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    try:
        budget = TimeBudget(max_seconds=25.0, clock=lambda: 0.0)
        args = SimpleNamespace(world_size=2, device=torch.device("cpu"))
        budget.on_train_begin(args, None, TrainerControl())
        budget.clock = lambda: 10.0 if rank == 0 else 30.0
        control = budget.on_step_end(args, SimpleNamespace(global_step=7), TrainerControl())
        Path(results, f"rank{rank}.json").write_text(
            json.dumps([budget.fraction, control.should_training_stop, budget.stopped_at])
        )
    finally:
        torch.distributed.destroy_process_group()


def test_time_budget_ranks_share_the_slowest_clock(tmp_path):
    # Rank 0 alone would go on (10 s of 25); it must stop with rank 1 (30 s), and both
    # must read the same fraction, or their learning rates (and DDP replicas) drift apart.
    torch.multiprocessing.spawn(
        _budget_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == [1.2, True, 7]


def test_split_seed_fixes_the_evaluation_data_while_data_seed_moves_training(
    tmp_path, tokenizer_dir
):
    def prepared(*overrides):
        config = tiny_config(tmp_path, tokenizer_dir, list(overrides))
        data = prepare_from_tables(tiny_tables(), config.data, seed=config.data.evaluation_seed)
        evaluation = [
            (e.user, e.template_id, e.candidates, e.target)
            for e in data.tasks.examples(
                "test", ["direct", "sequential"], seed=config.data.evaluation_seed
            )
        ]
        training = [
            (e.user, e.template_id, e.candidates, e.target)
            for e in data.tasks.training_examples(
                task_mixture(config.data), seed=config.data.seed, epoch=0
            )
        ]
        return data.splits.candidates, evaluation, training

    fixed_1 = prepared("data.seed=1", "data.split_seed=7")
    fixed_2 = prepared("data.seed=2", "data.split_seed=7")
    assert fixed_1[0] == fixed_2[0] and fixed_1[1] == fixed_2[1]  # same lists, same examples
    assert fixed_1[2] != fixed_2[2]  # other training examples
    # Without split_seed, data.seed draws the evaluation lists too (as before the field).
    plain_1, plain_2 = prepared("data.seed=1"), prepared("data.seed=2")
    assert plain_1[0] != plain_2[0]
    assert plain_1 == prepared("data.seed=3", "data.split_seed=1")[:2] + (plain_1[2],)
    assert tiny_config(tmp_path, tokenizer_dir, ["data.seed=5"]).data.evaluation_seed == 5


def test_training_arguments_follow_the_config(tmp_path, tokenizer_dir):
    config = tiny_config(
        tmp_path, tokenizer_dir, ["train.warmup_ratio=0.1", "train.gradient_accumulation_steps=3"]
    )
    args = training_arguments(config)
    assert args.warmup_steps == pytest.approx(0.1)
    assert args.gradient_accumulation_steps == 3 and args.per_device_train_batch_size == 4
    assert args.train_sampling_strategy == "sequential" and args.report_to == []


def test_local_rank_argument_is_accepted(tmp_path):
    from recsysllm.training import _parse_args

    for argv in (
        ["--local_rank=1", "--config", "c.yaml", "max_steps=2"],
        ["--config", "c.yaml", "--local_rank", "0"],
    ):
        args = _parse_args(argv)
        assert args.config == "c.yaml"
    assert _parse_args(["--local_rank=1", "--config", "c.yaml", "max_steps=2"]).overrides == [
        "max_steps=2"
    ]


# --------------------------------------------------------------------------- subprocess paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _driver_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=f"{REPO}{os.pathsep}{TESTS_DIR}",
        WANDB_MODE="disabled",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        DS_ACCELERATOR="cpu",
    )
    env.update(extra)
    return env


def _run_driver(
    spec: dict, launcher: list[str] | None = None, env: dict | None = None, timeout: int = 300
):
    spec_path = Path(spec["output_dir"]).with_suffix(".json")
    spec_path.write_text(json.dumps(spec))
    command = [*(launcher or [sys.executable]), str(Path(__file__)), str(spec_path)]
    result = subprocess.run(
        command, env=env or _driver_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def _losses(output_dir: Path) -> dict[int, float]:
    return {int(k): v for k, v in json.loads((output_dir / "losses.json").read_text()).items()}


@pytest.fixture
def single_rank_distributed_env(monkeypatch):
    """RANK/WORLD_SIZE/MASTER_* of a one-process job; tears the process group down after."""
    from accelerate.state import AcceleratorState

    for key, value in {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "DS_ACCELERATOR": "cpu",
        # TrainingArguments sets it to "true" for a DeepSpeed config and never unsets it:
        # recorded here, so the teardown removes it and later tests train without DeepSpeed.
        "ACCELERATE_USE_DEEPSPEED": "false",
    }.items():
        monkeypatch.setenv(key, value)
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)


def _check_deepspeed_row_groups(tmp_path, tokenizer_dir, monkeypatch) -> None:
    """Under DeepSpeed (ZeRO-2), batches split into row groups (two forward passes, one
    backward) log the same losses, step by step, as the same batches run padded."""
    import recsysllm.training as training_module

    overrides = [
        "train.deepspeed=configs/ds/zero2.json",
        "max_steps=4",
        "train.save_steps=4",
        "data.packing_row_length=96",
        "data.history_budget=1",
    ]
    split_batches = []
    row_groups = training_module.TrainingCollator.row_groups

    def recording(self, row_lengths):
        groups = row_groups(self, row_lengths)
        split_batches.append(groups is not None)
        return groups

    losses = {}
    for name, grouping in (("grouped", recording), ("padded", lambda self, lengths: None)):
        monkeypatch.setattr(training_module.TrainingCollator, "row_groups", grouping)
        config = tiny_config(tmp_path / name, tokenizer_dir, overrides)
        data = prepare_from_tables(tiny_tables(), config.data, seed=0)
        trainer, recorder = _train(config, data)
        assert trainer.is_deepspeed_enabled
        losses[name] = [recorder.losses[s] for s in sorted(recorder.losses)]
    monkeypatch.setattr(training_module.TrainingCollator, "row_groups", row_groups)
    assert any(split_batches)  # some batches really ran as two groups
    assert len(losses["grouped"]) == 4
    for got, expected in zip(losses["grouped"], losses["padded"], strict=True):
        assert math.isclose(got, expected, rel_tol=1e-4), (losses["grouped"], losses["padded"])


def test_deepspeed_zero2_in_one_process(
    tmp_path, tiny_data, tokenizer_dir, single_rank_distributed_env, monkeypatch
):
    # DeepSpeed caches its process groups across engines, so a later test's fresh group
    # is refused ("Group ... is not registered"): the row-group runs live in this test.
    _check_deepspeed_row_groups(tmp_path, tokenizer_dir, monkeypatch)
    overrides = ["train.deepspeed=configs/ds/zero2.json", "max_steps=6", "train.save_steps=6"]
    trainer, recorder = _train(tiny_config(tmp_path / "ds", tokenizer_dir, overrides), tiny_data)
    assert trainer.is_deepspeed_enabled
    losses = [recorder.losses[s] for s in sorted(recorder.losses)]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.2, losses
    checkpoint = tmp_path / "ds" / "checkpoint-6"
    assert read_meta(checkpoint).step == 6
    # DeepSpeed's own (partitioned) optimizer state sits in global_step6/.
    assert any(p.name.startswith("global_step") for p in checkpoint.iterdir())
    # The time budget under DeepSpeed: the same stop and the same wall-time schedule.
    ticks = iter(range(1000))
    overrides = [
        "train.deepspeed=configs/ds/zero2.json", "max_steps=50", "train.max_seconds=45",
        "train.lr_schedule=linear", "train.save_steps=100",
    ]  # fmt: skip
    trainer, _ = build_trainer(tiny_config(tmp_path / "dsb", tokenizer_dir, overrides), tiny_data)
    trainer.time_budget.clock = lambda: 10.0 * next(ticks)
    rates = LearningRates()
    trainer.add_callback(rates)
    trainer.train()
    assert trainer.is_deepspeed_enabled and trainer.state.global_step == 5
    expected = {k: 1e-2 * (1 - max(10 * (k - 1) / 45, k / 50)) for k in range(1, 6)}
    assert rates.rates == pytest.approx(expected)
    # The best checkpoint under DeepSpeed: the engine reloads it from its published directory.
    overrides = ["train.deepspeed=configs/ds/zero2.json", "max_steps=6", *BEST_BY_LOSS_EVERY_2]
    _, final = _train_with_scripted_losses(
        tmp_path / "dsc", tokenizer_dir, tiny_data, overrides, {2: 2.0, 4: 1.0, 6: 3.0}
    )
    best = _weights(tmp_path / "dsc" / "checkpoint-4")
    last = _weights(tmp_path / "dsc" / "checkpoint-6")
    assert any(not torch.equal(best[k], last[k]) for k in best)
    assert all(torch.equal(_weights(final)[k], best[k]) for k in best)
    assert read_meta(final).step == 4


@pytest.mark.slow
def test_two_cpu_ranks_under_torchrun_see_different_data_and_learn(tmp_path, tokenizer_dir):
    spec = {
        "output_dir": str(tmp_path / "ddp"),
        "tokenizer_dir": str(tokenizer_dir),
        # 8 examples, 2 per rank and step: the same batches come back every 2 steps.
        "overrides": [
            "data.examples_per_epoch=8",
            "train.per_device_batch_size=2",
            "max_steps=12",
            "train.save_steps=12",
        ],
        "record_batches": True,
    }
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
    ]
    _run_driver(spec, launcher=launcher, timeout=600)
    out = tmp_path / "ddp"
    seen = [json.loads((out / f"batches-rank{r}.json").read_text()) for r in (0, 1)]
    assert seen[0] and seen[1]
    assert not set(map(tuple, seen[0])) & set(map(tuple, seen[1]))  # different examples per rank
    losses = _losses(out)
    assert sum(losses[s] for s in (10, 11, 12)) < sum(losses[s] for s in (1, 2, 3)) - 0.5, losses


@pytest.mark.slow
def test_deepspeed_launcher_two_ranks(tmp_path, tokenizer_dir):
    spec = {
        "output_dir": str(tmp_path / "dsl"),
        "tokenizer_dir": str(tokenizer_dir),
        "overrides": ["train.deepspeed=configs/ds/zero2.json", "max_steps=3", "train.save_steps=3"],
    }
    launcher = ["deepspeed", "--num_gpus", "2", "--master_port", str(_free_port())]
    launcher[0] = str(Path(sys.executable).parent / "deepspeed")
    _run_driver(spec, launcher=launcher, timeout=600)
    assert read_meta(tmp_path / "dsl" / "checkpoint-3").step == 3


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, tokenizer_dir):
    base = {"tokenizer_dir": str(tokenizer_dir), "overrides": ["max_steps=6", "train.save_steps=2"]}
    _run_driver({**base, "output_dir": str(tmp_path / "a")})
    reference = _losses(tmp_path / "a")

    spec = {**base, "output_dir": str(tmp_path / "b"), "sleep_per_step": 1.0}
    spec_path = tmp_path / "b.json"
    spec_path.write_text(json.dumps(spec))
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__)), str(spec_path)], env=_driver_env()
    )
    deadline = time.time() + 300
    while not (tmp_path / "b" / "checkpoint-2").is_dir():
        assert process.poll() is None and time.time() < deadline, (
            "run ended before its first checkpoint"
        )
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "b" / "checkpoint-6").exists()

    _run_driver(
        {
            **base,
            "output_dir": str(tmp_path / "b"),
            "overrides": [*base["overrides"], "train.resume=latest"],
        }
    )
    resumed = _losses(tmp_path / "b")
    assert 6 in resumed
    for step, loss in resumed.items():
        assert loss == pytest.approx(reference[step], abs=1e-3), step


def _driver(spec_path: str) -> None:
    """Subprocess entry: train the tiny config described by a JSON spec, write losses.json."""
    import torch.distributed as dist

    from recsysllm.training import RecTrainer

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)
    output_dir = Path(spec["output_dir"])
    config = tiny_config(output_dir, Path(spec["tokenizer_dir"]), spec["overrides"])
    data = prepare_from_tables(tiny_tables(), config.data, seed=0)
    trainer, resume = build_trainer(config, data)
    recorder = LossRecorder()
    trainer.add_callback(recorder)
    batches: list[list[str]] = []
    if spec.get("record_batches"):
        original = RecTrainer.compute_loss

        def recording(self, model, inputs, *args, **kwargs):
            batches.append(list(inputs["batch_examples"]))
            return original(self, model, inputs, *args, **kwargs)

        trainer.compute_loss = recording.__get__(trainer)
    if spec.get("sleep_per_step"):

        class Slow(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                time.sleep(spec["sleep_per_step"])

        trainer.add_callback(Slow())
    trainer.train(resume_from_checkpoint=resume)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if spec.get("record_batches"):
        (output_dir / f"batches-rank{rank}.json").write_text(json.dumps(batches))
    if rank == 0:
        (output_dir / "losses.json").write_text(json.dumps(recorder.losses))


if __name__ == "__main__":
    _driver(sys.argv[-1])
