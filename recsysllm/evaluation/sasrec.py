"""SASRec (Kang & McAuley 2018), the sequential baseline every results table carries.

Configured as RecBole 1.2.1's ``SASRec`` defaults: 2 post-LayerNorm transformer blocks,
2 heads, hidden size 64, inner size 256, GELU, hidden and attention dropout 0.5,
layer-norm epsilon 1e-12, weights drawn from N(0, 0.02), item and position embeddings
summed (no sqrt(d) scaling), the output scored against the (tied) item embeddings,
full-softmax cross-entropy over every catalog item, Adam at 1e-3, at most 50 history
items, early stopping on the valid NDCG@10 (patience 10 epochs, RecBole's
``stopping_step``). RecBole itself cannot be installed beside our pins (it needs
numpy<2), hence this compact implementation in plain torch.

Training data is the same :class:`~recsysllm.data.splits.RecSplits` the harness uses:
each user's train events (``train_positions``). RecBole turns every prefix of a train
sequence into one example (history -> next item) and scores its last position; here a
causal encoder scores every position of a window at once, which is the same loss for
sequences of at most ``max_length + 1`` items at 1/``max_length`` of the compute. A
longer sequence is cut, from its end, into windows of ``max_length + 1`` items that
overlap by one item, so every train event but the first is a target exactly once (a
target early in a window sees fewer than ``max_length`` history items, where RecBole's
prefixes would show it the full 50).

Leave-one-out evaluation (:func:`split_histories`): the valid target is predicted from
the train events, the test target from the train events plus the valid target. Ranks
are over all catalog items, with the user's history (every item of that input) excluded
by default, and pessimistic on ties: an item scoring exactly as high as the target
ranks before it.

In the harness, :class:`SASRecItemRanker` is SASRec's ``ItemRanker`` row: the
protocol decides what is excluded, the splits give each user's chronological history.

Example:
    >>> ranker = fit(splits, SASRecConfig(), seed=0)  # doctest: +SKIP
    >>> ranker.rank_all([["Toy Story (1995)", "Fargo (1996)"]], k=10)  # doctest: +SKIP
    >>> row = SASRecItemRanker.for_split(ranker, splits, "test")  # doctest: +SKIP
    >>> evaluate_ranker("SASRec", row, examples, protocol)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from recsysllm.data.splits import RecSplits
from recsysllm.evaluation import metrics
from recsysllm.files import atomic_write
from recsysllm.schema import Example

logger = logging.getLogger(__name__)

PAD = 0  # item index 0 pads; catalog item i (sorted keys) has index i + 1


@dataclass(frozen=True)
class SASRecConfig:
    """Architecture and training of SASRec (defaults: RecBole 1.2.1's ``sasrec.yaml``).

    Attributes:
        num_layers: transformer blocks.
        num_heads: attention heads.
        hidden_size: embedding and model width.
        inner_size: feed-forward width.
        hidden_dropout: dropout on embeddings and block outputs.
        attention_dropout: dropout on attention weights.
        layer_norm_eps: LayerNorm epsilon.
        initializer_range: standard deviation of the N(0, s) weight initialisation.
        max_length: most recent history items the model reads.
        learning_rate: Adam learning rate.
        batch_size: training windows (of up to ``max_length`` targets) per step.
        max_epochs: training epochs at most.
        patience: stop after this many epochs without a better valid NDCG@k.
        valid_k: the k of the early-stopping metric NDCG@k.
        exclude_history: rank without the history items when validating.
        eval_batch_size: users per scoring batch.
        max_seconds: stop after the first epoch that ends past this many seconds of
            training (None: no time cap). A capped run (``SASRecRanker.capped``) may stop
            before early stopping would, so its figures are a lower bound of SASRec's;
            where the cap falls depends on the machine, so a capped fit is not
            reproducible across machines (the weights cache makes it reusable).
    """

    num_layers: int = 2
    num_heads: int = 2
    hidden_size: int = 64
    inner_size: int = 256
    hidden_dropout: float = 0.5
    attention_dropout: float = 0.5
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    max_length: int = 50
    learning_rate: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 10
    valid_k: int = 10
    exclude_history: bool = True
    eval_batch_size: int = 256
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"SASRecConfig.max_seconds must be > 0, got {self.max_seconds}")
        if self.max_seconds is not None:
            # 120 (YAML int) and 120.0 (CLI float) are one setting: one cache entry.
            object.__setattr__(self, "max_seconds", float(self.max_seconds))
        for name in ("num_layers", "num_heads", "hidden_size", "inner_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"SASRecConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("batch_size", "max_epochs", "patience", "valid_k", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SASRecConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"SASRecConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(
                    f"SASRecConfig.{name} must be in [0, 1), got {getattr(self, name)}"
                )


class SASRecBlock(nn.Module):
    """One post-LayerNorm transformer block as RecBole's ``TransformerLayer``.

    Attention weights get ``attention_dropout``; the attention output and the
    feed-forward output get ``hidden_dropout`` before their residual sum and LayerNorm.
    """

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(
            config.hidden_size,
            config.num_heads,
            dropout=config.attention_dropout,
            batch_first=True,
        )
        self.attention_dropout = nn.Dropout(config.hidden_dropout)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = nn.Sequential(
            nn.Linear(config.hidden_size, config.inner_size),
            nn.GELU(),
            nn.Linear(config.inner_size, config.hidden_size),
        )
        self.feed_forward_dropout = nn.Dropout(config.hidden_dropout)
        self.feed_forward_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, causal_mask: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attention(
            hidden, hidden, hidden, attn_mask=causal_mask, need_weights=False
        )
        hidden = self.attention_norm(hidden + self.attention_dropout(attended))
        transformed = self.feed_forward(hidden)
        return self.feed_forward_norm(hidden + self.feed_forward_dropout(transformed))


class SASRec(nn.Module):
    """The SASRec network: item ids [batch, length] -> hidden states [batch, length, hidden].

    Sequences are right-padded with ``PAD``; with the causal mask a real position never
    attends to a later (padded or real) one, so padding needs no mask of its own.

    Args:
        num_items: catalog size (item indices 1..num_items; 0 pads).
        config: architecture.
    """

    def __init__(self, num_items: int, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        self.num_items = num_items
        self.item_embedding = nn.Embedding(num_items + 1, config.hidden_size, padding_idx=PAD)
        self.position_embedding = nn.Embedding(config.max_length, config.hidden_size)
        self.embedding_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.embedding_dropout = nn.Dropout(config.hidden_dropout)
        self.blocks = nn.ModuleList(SASRecBlock(config) for _ in range(config.num_layers))
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # RecBole's SASRec._init_weights: N(0, initializer_range), LayerNorm 1/0, biases 0.
        if isinstance(module, nn.Linear | nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        if isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
        if isinstance(module, nn.MultiheadAttention):
            module.in_proj_weight.data.normal_(mean=0.0, std=self.config.initializer_range)
            module.in_proj_bias.data.zero_()

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        length = item_ids.shape[1]
        if length > self.config.max_length:
            raise ValueError(
                f"sequence length {length} exceeds max_length {self.config.max_length}"
            )
        positions = torch.arange(length, device=item_ids.device)
        hidden = self.item_embedding(item_ids) + self.position_embedding(positions)
        hidden = self.embedding_dropout(self.embedding_norm(hidden))
        causal_mask = torch.triu(
            torch.ones(length, length, dtype=torch.bool, device=item_ids.device), diagonal=1
        )  # True = may not attend
        for block in self.blocks:
            hidden = block(hidden, causal_mask)
        return hidden  # [batch, length, hidden]

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every catalog item (padding excluded): [..., hidden] -> [..., num_items]."""
        return hidden @ self.item_embedding.weight[1:].T


@dataclass(frozen=True)
class EpochRecord:
    """One training epoch: mean training loss and the valid NDCG@k after it."""

    epoch: int
    loss: float
    valid_ndcg: float


class SASRecRanker:
    """A trained SASRec over a catalog of item keys (the harness's keys).

    Attributes:
        model: the network, in eval mode.
        items: catalog item keys, sorted; column i of :meth:`score_all` is ``items[i]``.
        config: the configuration it was trained with.
        log: one record per trained epoch.
        best_epoch: the epoch whose weights the model holds (best valid NDCG@k).
        stopped: why training ended: "early stopping", "max_epochs" or "time cap"
            (None: not trained here).
        train_seconds: wall-clock seconds of training.
    """

    def __init__(
        self,
        model: SASRec,
        items: Sequence[str],
        config: SASRecConfig,
        log: Sequence[EpochRecord] = (),
        best_epoch: int | None = None,
        stopped: str | None = None,
        train_seconds: float | None = None,
    ) -> None:
        if len(items) != model.num_items:
            raise ValueError(f"{len(items)} item keys for a model of {model.num_items} items")
        self.model = model.eval()
        self.items = tuple(items)
        self.index = {key: i for i, key in enumerate(self.items)}
        self.config = config
        self.log = list(log)
        self.best_epoch = best_epoch
        self.stopped = stopped
        self.train_seconds = train_seconds

    @property
    def capped(self) -> bool:
        """Whether a cap (time or epochs) ended training before early stopping did: a
        capped SASRec's figures are a lower bound."""
        return self.stopped in ("time cap", "max_epochs")

    def encode(self, history: Sequence[str]) -> list[int]:
        """Model input of a history: its last ``max_length`` items as indices (1-based)."""
        unknown = [key for key in history if key not in self.index]
        if unknown:
            raise ValueError(f"history items not in the SASRec catalog: {unknown[:3]}")
        return [self.index[key] + 1 for key in history[-self.config.max_length :]]

    @torch.no_grad()
    def score_all(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        """Log-softmax over all catalog items of the next item, per history.

        An empty history reads as one padding position (an uninformed score).

        Returns:
            [len(histories), len(items)] float tensor; column i is ``items[i]``.
        """
        self.model.eval()
        rows = []
        for start in range(0, len(histories), self.config.eval_batch_size):
            encoded = [
                self.encode(h) or [PAD]
                for h in histories[start : start + self.config.eval_batch_size]
            ]
            inputs, lengths = _pad(encoded)
            hidden = self.model(inputs)
            last = hidden[torch.arange(len(encoded)), lengths - 1]  # [batch, hidden]
            rows.append(torch.log_softmax(self.model.item_logits(last), dim=-1))
        if not rows:
            return torch.empty(0, len(self.items))
        return torch.cat(rows)

    def rank_all(
        self, histories: Sequence[Sequence[str]], k: int, exclude_history: bool = True
    ) -> list[list[str]]:
        """Top-``k`` item keys per history, best first (history items left out by default)."""
        scores = self.score_all(histories)
        if exclude_history:
            scores = _mask_histories(scores, histories, self.index)
        k = min(k, len(self.items))
        top = torch.topk(scores, k, dim=-1, sorted=True)
        return [
            [self.items[i] for i, value in zip(indices, values, strict=True) if value > -math.inf]
            for indices, values in zip(top.indices.tolist(), top.values.tolist(), strict=True)
        ]

    def target_ranks(
        self,
        histories: Sequence[Sequence[str]],
        targets: Sequence[str],
        exclude_history: bool = True,
    ) -> list[int | None]:
        """1-based rank of each target over all catalog items (pessimistic on ties).

        A target that is itself a history item is not ranked (None) when history is
        excluded, as the popularity ranker does.
        """
        scores = self.score_all(histories)
        if exclude_history:
            scores = _mask_histories(scores, histories, self.index)
        return ranks_of_targets(scores, [self.index[t] for t in targets])

    def candidate_ranks(
        self,
        histories: Sequence[Sequence[str]],
        candidates: Sequence[Sequence[str]],
        targets: Sequence[str],
    ) -> list[int]:
        """1-based rank of each target among its candidates (pessimistic on ties)."""
        scores = self.score_all(histories)
        ranks = []
        for row, keys, target in zip(scores, candidates, targets, strict=True):
            values = row[[self.index[key] for key in keys]]
            target_value = row[self.index[target]]
            ranks.append(int((values >= target_value).sum()))  # counts the target itself
        return ranks


def ranks_of_targets(scores: torch.Tensor, targets: Sequence[int]) -> list[int | None]:
    """1-based rank of column ``targets[u]`` in row u, counting ties against it.

    A target scored -inf (excluded) is not ranked: None.

    Example:
        >>> ranks_of_targets(torch.tensor([[0.1, 0.5, 0.5], [0.0, -math.inf, 1.0]]), [1, 1])
        [2, None]
    """
    target_index = torch.tensor(targets, dtype=torch.long)
    target_scores = scores[torch.arange(len(targets)), target_index]
    at_least = (scores >= target_scores[:, None]).sum(dim=1)  # counts the target itself
    return [
        None if value == -math.inf else int(rank)
        for value, rank in zip(target_scores.tolist(), at_least.tolist(), strict=True)
    ]


def split_histories(splits: RecSplits, split: str) -> dict[str, tuple[tuple[str, ...], str]]:
    """Per user with a target in ``split``: (chronological history keys, target key).

    The history is every event before the target: the train events for valid, the
    train events and the valid target for test (leave-one-out).
    """
    result = {}
    for user in splits.split_users(split):
        index = splits.target_index(split, user)
        events = splits.sequences[user]
        result[user] = (tuple(e.item for e in events[:index]), events[index].item)
    return result


class SASRecItemRanker:
    """SASRec as an ``evaluation.ItemRanker``: one row of the harness's tables.

    The harness hands over examples; SASRec reads each example's user's full
    chronological history from ``histories`` (``split_histories``), not the prompt's
    sampled ``example.history``. Scores are SASRec's log-softmax over the catalog.

    Args:
        ranker: a trained SASRec.
        histories: user -> chronological item keys before that split's target.

    Example:
        >>> row = SASRecItemRanker.for_split(ranker, splits, "test")  # doctest: +SKIP
        >>> evaluate_ranker("SASRec", row, examples, protocol)  # doctest: +SKIP
    """

    def __init__(self, ranker: SASRecRanker, histories: Mapping[str, Sequence[str]]) -> None:
        self.ranker = ranker
        self.histories = {user: tuple(history) for user, history in histories.items()}

    @classmethod
    def for_split(cls, ranker: SASRecRanker, splits: RecSplits, split: str) -> SASRecItemRanker:
        """The adapter for the users of ``split`` ("valid" or "test")."""
        return cls(ranker, {user: h for user, (h, _) in split_histories(splits, split).items()})

    def scores(self, examples: Sequence[Example]) -> torch.Tensor:
        """[examples, catalog] log-softmax of the next item after each example's user's history."""
        missing = sorted({e.user for e in examples} - set(self.histories))
        if missing:
            raise ValueError(f"no SASRec history for users {missing[:5]}")
        return self.ranker.score_all([self.histories[e.user] for e in examples])

    def rank_all(
        self, examples: Sequence[Example], exclude: Sequence[frozenset[str]], k: int
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` (item key, log-probability) per example, never an item of ``exclude``."""
        scores = _mask_histories(self.scores(examples), exclude, self.ranker.index)
        top = torch.topk(scores, min(k, len(self.ranker.items)), dim=-1, sorted=True)
        return [
            [
                (self.ranker.items[i], value)
                for i, value in zip(indices, values, strict=True)
                if value > -math.inf
            ]
            for indices, values in zip(top.indices.tolist(), top.values.tolist(), strict=True)
        ]

    def score_candidates(self, examples: Sequence[Example]) -> list[list[float]]:
        """Log-probability of each candidate of each example, in candidate order."""
        scores = self.scores(examples)
        return [
            scores[row, [self.ranker.index[key] for key in example.candidates]].tolist()
            for row, example in enumerate(examples)
        ]


def _pad(sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad with PAD: ([batch, longest] ids, [batch] lengths)."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    padded = torch.full((len(sequences), int(lengths.max())), PAD, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
    return padded, lengths


def _mask_histories(
    scores: torch.Tensor, histories: Sequence[Collection[str]], index: Mapping[str, int]
) -> torch.Tensor:
    scores = scores.clone()
    for row, history in enumerate(histories):
        if history:
            scores[row, [index[key] for key in history]] = -math.inf
    return scores


def training_windows(sequence: Sequence[int], max_length: int) -> list[list[int]]:
    """Cut a sequence into windows of at most ``max_length + 1`` items, from its end.

    Consecutive windows share one item (a window's first item is the last of the
    window before it in time), so each item but the first is the target of exactly one
    position. A window of one item would carry no target and is not made.

    Example:
        >>> training_windows([1, 2, 3, 4, 5, 6], max_length=2)
        [[4, 5, 6], [2, 3, 4], [1, 2]]
    """
    windows = []
    end = len(sequence)
    while end > 1:
        start = max(0, end - max_length - 1)
        windows.append(list(sequence[start:end]))
        end = start + 1
    return windows


@dataclass
class _ValidSet:
    histories: list[tuple[str, ...]] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)


def fit(
    splits: RecSplits, config: SASRecConfig | None = None, seed: int = 0, progress: bool = False
) -> SASRecRanker:
    """Train SASRec on the splits' train events with early stopping on valid NDCG@k.

    Deterministic for a given seed on CPU (the global torch RNG is forked, so the
    caller's random state is left as it was).

    Args:
        splits: the data's splits; the catalog is every item key of the splits.
        config: architecture and training (None: RecBole's defaults).
        seed: seeds the initialisation, dropout and the window order.
        progress: log one line per epoch at INFO level.

    Returns:
        The ranker holding the weights of the best valid epoch.

    Raises:
        ValueError: no train sequence with at least two events.
    """
    config = config or SASRecConfig()
    items = sorted(set(splits.item_keys.values()))
    index = {key: i for i, key in enumerate(items)}
    windows = [
        window
        for user, events in sorted(splits.train.items())
        for window in training_windows([index[e.item] + 1 for e in events], config.max_length)
    ]
    if not windows:
        raise ValueError(f"{splits.tables.name}: no user has two train events to learn from")
    valid = _ValidSet()
    for history, target in split_histories(splits, "valid").values():
        valid.histories.append(history)
        valid.targets.append(target)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        model = SASRec(len(items), config)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        ranker = SASRecRanker(model, items, config)
        best_score, best_state, best_epoch = -1.0, copy.deepcopy(model.state_dict()), 0
        log: list[EpochRecord] = []
        started = time.monotonic()
        stopped = "max_epochs"
        for epoch in range(1, config.max_epochs + 1):
            model.train()
            order = rng.permutation(len(windows))
            total_loss, total_targets = 0.0, 0
            for start in range(0, len(order), config.batch_size):
                batch = [windows[i] for i in order[start : start + config.batch_size]]
                inputs, _ = _pad([w[:-1] for w in batch])
                targets, _ = _pad([w[1:] for w in batch])
                real = targets != PAD
                hidden = model(inputs)[real]  # [targets, hidden]
                logits = model.item_logits(hidden)
                loss = nn.functional.cross_entropy(logits, targets[real] - 1)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total_loss += loss.item() * int(real.sum())
                total_targets += int(real.sum())
            score = _valid_ndcg(ranker, valid, config)
            log.append(EpochRecord(epoch, total_loss / total_targets, score))
            if progress:
                logger.info(
                    "SASRec epoch %d: loss %.4f, valid NDCG@%d %.4f",
                    epoch, total_loss / total_targets, config.valid_k, score,
                )  # fmt: skip
            if score > best_score:
                best_score, best_state, best_epoch = score, copy.deepcopy(model.state_dict()), epoch
            elif epoch - best_epoch >= config.patience:
                stopped = "early stopping"
                break
            if config.max_seconds is not None and time.monotonic() - started > config.max_seconds:
                stopped = "time cap" if epoch < config.max_epochs else "max_epochs"
                break
        model.load_state_dict(best_state)
    return SASRecRanker(model, items, config, log, best_epoch, stopped, time.monotonic() - started)


def _valid_ndcg(ranker: SASRecRanker, valid: _ValidSet, config: SASRecConfig) -> float:
    if not valid.targets:
        return 0.0
    ranks = ranker.target_ranks(valid.histories, valid.targets, config.exclude_history)
    return metrics.ndcg_at_k(ranks, config.valid_k)


# --------------------------------------------------------------------------- weights cache

CACHE_FORMAT = 1


def splits_fingerprint(splits: RecSplits) -> str:
    """sha256 over everything :func:`fit` reads from the splits: the sorted item keys,
    every user's train item keys and valid (history, target). Equal fingerprints mean
    the same training and early-stopping data."""
    payload = {
        "items": sorted(set(splits.item_keys.values())),
        "train": {user: [e.item for e in events] for user, events in sorted(splits.train.items())},
        "valid": {
            user: [list(history), target]
            for user, (history, target) in sorted(split_histories(splits, "valid").items())
        },
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _cache_identity(fingerprint: str, config: SASRecConfig, seed: int) -> dict:
    return {
        "format": CACHE_FORMAT,
        "splits_fingerprint": fingerprint,
        "config": dataclasses.asdict(config),
        "seed": seed,
    }


def cache_paths(cache_dir: str | os.PathLike, identity: Mapping) -> tuple[Path, Path]:
    """(weights, metadata) paths of one cache entry: named by a hash of its identity."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()
    stem = Path(cache_dir) / f"sasrec-{digest[:16]}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def fit_cached(
    splits: RecSplits,
    config: SASRecConfig | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> tuple[SASRecRanker, dict]:
    """:func:`fit`, reusing weights cached in ``cache_dir`` for the same data, config and seed.

    An entry is two files named by a hash of (splits fingerprint, config, seed):
    ``sasrec-<hash>.safetensors`` (the weights) and ``sasrec-<hash>.json`` (the
    identity, the sha256 of the weights, the training log). It is reused only when the
    JSON's identity equals this call's and the weights hash as recorded; otherwise
    (other splits, another config or seed, a corrupt or edited file) SASRec is trained
    and the entry written (weights first, the JSON last, each atomically), so a
    half-written entry is never read.

    Returns:
        (ranker, facts for results.json: "cache" ("reused" | "trained" | "off"), the
        entry's path, the identity, epochs, best epoch, why training stopped, capped,
        training seconds, best valid NDCG).
    """
    config = config or SASRecConfig()
    fingerprint = splits_fingerprint(splits)
    identity = _cache_identity(fingerprint, config, seed)
    if cache_dir is None:
        ranker = fit(splits, config, seed, progress)
        return ranker, _facts(ranker, identity, "off", None)
    weights_path, meta_path = cache_paths(cache_dir, identity)
    ranker = _load_cached(splits, config, identity, weights_path, meta_path)
    if ranker is not None:
        return ranker, _facts(ranker, identity, "reused", meta_path)
    ranker = fit(splits, config, seed, progress)
    state = {name: tensor.contiguous() for name, tensor in ranker.model.state_dict().items()}
    atomic_write(weights_path, lambda tmp: save_file(state, str(tmp)))
    record = {
        **identity,
        "weights": weights_path.name,
        "weights_sha256": _sha256(weights_path),
        "num_items": len(ranker.items),
        "log": [dataclasses.asdict(r) for r in ranker.log],
        "best_epoch": ranker.best_epoch,
        "stopped": ranker.stopped,
        "train_seconds": ranker.train_seconds,
    }
    atomic_write(meta_path, json.dumps(record, indent=2) + "\n")
    return ranker, _facts(ranker, identity, "trained", meta_path)


def _load_cached(
    splits: RecSplits, config: SASRecConfig, identity: Mapping, weights_path: Path, meta_path: Path
) -> SASRecRanker | None:
    """The cached ranker, or None (with a warning naming the file) when it cannot be used."""
    if not meta_path.exists():
        return None
    try:
        record = json.loads(meta_path.read_text(encoding="utf-8"))
        for name, value in identity.items():
            if record.get(name) != value:
                logger.warning(
                    "%s: field %r differs from this run's; retraining SASRec", meta_path, name
                )
                return None
        if not weights_path.exists() or _sha256(weights_path) != record["weights_sha256"]:
            logger.warning(
                "%s: weights missing or not as recorded; retraining SASRec", weights_path
            )
            return None
        items = sorted(set(splits.item_keys.values()))
        model = SASRec(len(items), config)
        model.load_state_dict(load_file(str(weights_path)), strict=True)
        log = [EpochRecord(**entry) for entry in record["log"]]
        return SASRecRanker(
            model,
            items,
            config,
            log,
            record["best_epoch"],
            record["stopped"],
            record["train_seconds"],
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        logger.warning("%s: unreadable SASRec cache entry (%s); retraining", meta_path, error)
        return None


def _facts(ranker: SASRecRanker, identity: Mapping, cache: str, path: Path | None) -> dict:
    best = max((r.valid_ndcg for r in ranker.log), default=None)
    return {
        "cache": cache,
        "cache_entry": None if path is None else str(path),
        **identity,
        "epochs": len(ranker.log),
        "best_epoch": ranker.best_epoch,
        "best_valid_ndcg": best,
        "stopped": ranker.stopped,
        "capped": ranker.capped,
        "lower_bound": ranker.capped,
        "train_seconds": ranker.train_seconds,
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
