"""Evaluate systems on task examples: one outcome per example, metrics with standard errors.

The protocol is DESIGN.md section 8. Each example is scored by the decoding its
answer needs (its *variant*):

| variant      | examples                                    | decoding                          | metrics                     |
|--------------|---------------------------------------------|-----------------------------------|-----------------------------|
| `all_items`  | item answer, no candidates (sequential)     | trie-constrained beam search      | HR@k, NDCG@k (k > 1)        |
| `candidates` | item answer, 1-of-N candidates (direct ...) | exact log-likelihood of each      | HR@k, NDCG@k (k > 1)        |
| `yesno`      | one of the template's two answer words      | log-likelihood of the two words   | accuracy, AUC (TALLRec)     |
| `rating`     | numeric rating                              | greedy text, then parse_rating    | RMSE, MAE, unparseable      |
| `text`       | explanation / review sentence               | greedy text                       | BLEU-4, ROUGE-1/2/L         |

Rules that decide numbers:

- one exclusion setting for every row of a table (:class:`EvalProtocol`): by
  default (``exclude_history=True``) a ranking over all items never returns an
  item the user interacted with before the target (the user's WHOLE history, not
  just the items the prompt shows; RecBole's full-sort protocol); with
  ``exclude_history=False`` nothing is excluded (P5, OpenP5, TIGER). A target
  outside the returned top-k is a miss at every k.
- candidate ranking and yes/no are pessimistic on ties: a candidate scoring exactly
  as high as the target ranks before it, and a tie between the two answer words is
  wrong, so a model that cannot tell candidates apart earns nothing.
- ratings: every example counts; an unparseable output or a number outside the
  rating scale is counted (``unparseable``, ``out_of_scale``) and scores as the
  worst rating on the scale (``metrics.UNPARSEABLE_RATING_RULE``).
- every aggregate carries its standard error, with users as clusters (a user answers
  several templates, so a row's examples are not independent): cluster-robust SE of
  the mean for per-example metrics (HR, NDCG, accuracy, MAE), the delta method on it
  for RMSE, a seeded bootstrap over users for corpus BLEU, ROUGE and AUC.

Metrics are reported per (family, variant, template) and aggregated over the seen
templates, the unseen templates and all templates of a (family, variant): aggregates
pool the examples (micro-average), so corpus BLEU and RMSE stay what their
definitions say.

More ranking rows: anything with the :class:`ItemRanker` methods goes through
:func:`evaluate_ranker` with the same examples and protocol as the model, so it gets
the same users, the same exclusion and the same metrics (see the baselines module).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch
from tqdm.auto import tqdm

from recsysllm.data.catalog import EntityCatalog
from recsysllm.evaluation import metrics
from recsysllm.evaluation.diversity import diversity_metrics
from recsysllm.generation import ItemPrior
from recsysllm.inference import DEFAULT_YES_NO_WORDS, Inference, user_free_example
from recsysllm.prompt_layout import (
    DEFAULT_TEXT_ANSWER_TOKENS,
    AnswerBudget,
    check_prompts_fit,
)
from recsysllm.prompts import PromptSet
from recsysllm.schema import Example
from recsysllm.tokenization import SegmentTokenizer

VARIANTS = ("all_items", "candidates", "yesno", "rating", "text")
RANKING_VARIANTS = ("all_items", "candidates")
SPLITS = ("seen", "unseen", "all")
BOOTSTRAP_RESAMPLES = 200


def example_variant(example: Example) -> str:
    """Which decoding and metrics an example needs (see the module table)."""
    if example.answer_type == "item":
        return "candidates" if example.candidates else "all_items"
    if example.answer_type in ("yesno", "rating", "text"):
        return example.answer_type
    raise ValueError(
        f"{example.describe()}: answer_type {example.answer_type!r} cannot be evaluated "
        f"(expected one of item, yesno, rating, text)"
    )


@dataclass(frozen=True)
class EvalProtocol:
    """What every row of one results table shares.

    Attributes:
        ks: ranking cut-offs (HR@k for every k, NDCG@k for k > 1).
        exclude_history: rank all items without the user's earlier items (default),
            or with nothing excluded.
        history: user -> every item the user interacted with before the evaluated
            target (``history_items``); used when ``exclude_history``.
        rating_scale: (min, max) rating, for the worst-case rule.
        seed: seeds the bootstrap standard errors (and sampling decoders).
        catalog_size: items in the catalog; when set, every ranking row of the
            aggregates carries ``diversity`` (``diversity.diversity_metrics`` of its
            top-max(ks) lists: coverage, top item / top 1% / largest prefix group
            shares, Gini).
    """

    ks: tuple[int, ...] = (1, 5, 10)
    exclude_history: bool = True
    history: Mapping[str, Collection[str]] = field(default_factory=dict)
    rating_scale: tuple[float, float] = (1.0, 5.0)
    seed: int = 0
    catalog_size: int | None = None

    def excluded(self, example: Example) -> frozenset[str]:
        """Items never to return for this example's all-item ranking."""
        if not self.exclude_history:
            return frozenset()
        if example.user not in self.history:
            raise ValueError(
                f"{example.describe()}: exclude_history needs the user's history items, "
                "but EvalProtocol.history has no entry for this user"
            )
        return frozenset(self.history[example.user])

    @property
    def exclusion_label(self) -> str:
        return (
            "user's training history excluded from all-item rankings"
            if self.exclude_history
            else "nothing excluded from all-item rankings"
        )


@dataclass(frozen=True)
class ExampleOutcome:
    """What a system produced for one example, enough to recompute every metric.

    Attributes:
        family: task family of the example.
        template_id: prompt template id.
        seen: whether the template was used in training.
        variant: one of VARIANTS.
        user: user id.
        target: gold answer as text.
        rank: 1-based rank of the target (ranking variants), None when not ranked.
        top: the system's top-k ``(item, score)`` (ranking variants), best first.
        rating: the parsed number (``rating``; may lie outside the scale), None when
            unparseable.
        correct: whether the yes/no answer was right (``yesno``).
        yes_score: log p(positive word) - log p(negative word) (``yesno``; AUC).
        positive: whether the gold answer is the positive word (``yesno``).
        text: generated text (``rating``: the raw output; ``text``: the hypothesis).
        truncated: whether the prompt lost history (or other context) to fit.
    """

    family: str
    template_id: str
    seen: bool
    variant: str
    user: str
    target: str
    rank: int | None = None
    top: tuple[tuple[str, float], ...] = ()
    rating: float | None = None
    correct: bool | None = None
    yes_score: float | None = None
    positive: bool | None = None
    text: str | None = None
    truncated: bool = False


@dataclass
class EvaluationResults:
    """Outcomes of one system (the model or a baseline) under one protocol.

    Attributes:
        system: name of the system ("model", "popularity", ...).
        outcomes: one per evaluated example, in example order.
        protocol: the shared protocol (ks, exclusion, rating scale, seed).
    """

    system: str
    outcomes: list[ExampleOutcome] = field(default_factory=list)
    protocol: EvalProtocol = field(default_factory=EvalProtocol)

    @property
    def ks(self) -> tuple[int, ...]:
        return self.protocol.ks

    def group_metrics(self, outcomes: Sequence[ExampleOutcome]) -> tuple[dict, dict]:
        """(metrics, standard errors) of one group of outcomes, all of the same variant."""
        variants = {o.variant for o in outcomes}
        if len(variants) != 1:
            raise ValueError(f"a metric group must hold one variant, got {sorted(variants)}")
        variant = variants.pop()
        seed = self.protocol.seed
        # A user answers several templates: standard errors treat users as clusters.
        users = [o.user for o in outcomes]
        if variant in RANKING_VARIANTS:
            return _ranking_metrics([o.rank for o in outcomes], self.ks, users)
        if variant == "yesno":
            correct = [1.0 if o.correct else 0.0 for o in outcomes]
            values = {"accuracy": metrics.accuracy([bool(c) for c in correct])}
            errors = {"accuracy": metrics.mean_stderr(correct, users)}
            scores = [o.yes_score if o.yes_score is not None else 0.0 for o in outcomes]
            labels = [bool(o.positive) for o in outcomes]
            if all(o.yes_score is not None for o in outcomes):
                values["AUC"] = metrics.auc(scores, labels)
                errors["AUC"] = metrics.bootstrap_stderr(
                    lambda rows: _auc_or_half([scores[i] for i in rows], [labels[i] for i in rows]),
                    len(outcomes),
                    seed,
                    BOOTSTRAP_RESAMPLES,
                    users,
                )
            return values, errors
        if variant == "rating":
            targets = [float(o.target) for o in outcomes]
            low, high = self.protocol.rating_scale
            predictions = [
                o.rating if o.rating is not None and low <= o.rating <= high else None
                for o in outcomes
            ]
            scores = metrics.rating_metrics(predictions, targets, self.protocol.rating_scale)
            filled = [
                metrics.worst_case_rating(t, self.protocol.rating_scale) if p is None else p
                for p, t in zip(predictions, targets, strict=True)
            ]
            differences = [p - t for p, t in zip(filled, targets, strict=True)]
            return (
                {"RMSE": scores["rmse"], "MAE": scores["mae"]},
                {
                    "RMSE": metrics.rmse_stderr(differences, users),
                    "MAE": metrics.mean_stderr([abs(d) for d in differences], users),
                },
            )
        hypotheses = [o.text or "" for o in outcomes]
        references = [o.target for o in outcomes]
        # An example's ROUGE does not depend on the resample: scored once. Every metric's
        # bootstrap draws the same resamples (one seed): each is scored once, not per metric.
        rouge_rows = metrics.rouge_per_example(hypotheses, references)
        scored: dict[tuple[int, ...], dict[str, float]] = {}

        def text_metrics(rows: Sequence[int]) -> dict[str, float]:
            key = tuple(rows)
            if key not in scored:
                hyps, refs = [hypotheses[i] for i in rows], [references[i] for i in rows]
                rouge = metrics.mean_rouge(rouge_rows, rows)
                scored[key] = {
                    "BLEU-4": metrics.bleu4(hyps, refs),
                    "ROUGE-1": rouge["rouge1"],
                    "ROUGE-2": rouge["rouge2"],
                    "ROUGE-L": rouge["rougeL"],
                }
            return scored[key]

        values = text_metrics(range(len(outcomes)))
        errors = {
            name: metrics.bootstrap_stderr(
                lambda rows, name=name: text_metrics(rows)[name],
                len(outcomes),
                seed,
                BOOTSTRAP_RESAMPLES,
                users,
            )
            for name in values
        }
        return values, errors

    def per_template(self) -> list[dict]:
        """One row per (family, variant, template): counts, metrics, standard errors."""
        groups: dict[tuple[str, str, str], list[ExampleOutcome]] = {}
        for outcome in self.outcomes:
            key = (outcome.family, outcome.variant, outcome.template_id)
            groups.setdefault(key, []).append(outcome)
        rows = []
        for (family, variant, template_id), group in sorted(groups.items()):
            rows.append(
                {
                    "family": family,
                    "variant": variant,
                    "template_id": template_id,
                    "split": "seen" if group[0].seen else "unseen",
                    **self._counts_and_metrics(group),
                }
            )
        return rows

    def aggregated(self) -> list[dict]:
        """One row per (family, variant, split) for split in seen / unseen / all.

        A split without examples (e.g. no unseen template evaluated) has no row.
        """
        groups: dict[tuple[str, str], list[ExampleOutcome]] = {}
        for outcome in self.outcomes:
            groups.setdefault((outcome.family, outcome.variant), []).append(outcome)
        rows = []
        for (family, variant), group in sorted(groups.items()):
            for split in SPLITS:
                members = [o for o in group if split == "all" or o.seen == (split == "seen")]
                if not members:
                    continue
                rows.append(
                    {
                        "family": family,
                        "variant": variant,
                        "split": split,
                        "templates": sorted({o.template_id for o in members}),
                        **self._counts_and_metrics(members),
                    }
                )
        return rows

    def to_dict(self) -> dict:
        """JSON-ready summary (per-example outcomes go to outcomes.jsonl)."""
        return {
            "system": self.system,
            "count": len(self.outcomes),
            "per_template": self.per_template(),
            "aggregated": self.aggregated(),
        }

    def outcome_records(self) -> Iterable[dict]:
        """One JSON-ready dict per outcome (the outcomes.jsonl lines)."""
        for outcome in self.outcomes:
            record = asdict(outcome)
            record["top"] = [[key, score] for key, score in outcome.top]
            yield {"system": self.system, **record}

    def _counts_and_metrics(self, outcomes: Sequence[ExampleOutcome]) -> dict:
        low, high = self.protocol.rating_scale
        ratings = [o for o in outcomes if o.variant == "rating"]
        values, errors = self.group_metrics(outcomes)
        row = {
            "count": len(outcomes),
            "users": len({o.user for o in outcomes}),
            "truncated": sum(o.truncated for o in outcomes),
            "unparseable": sum(1 for o in ratings if o.rating is None),
            "out_of_scale": sum(
                1 for o in ratings if o.rating is not None and not low <= o.rating <= high
            ),
            "metrics": values,
            "stderr": errors,
        }
        if self.protocol.catalog_size is not None and outcomes[0].variant in RANKING_VARIANTS:
            k = max(self.ks)
            lists = [[key for key, _ in o.top[:k]] for o in outcomes]
            row["diversity"] = {
                "k": k,
                **diversity_metrics(lists, self.protocol.catalog_size),
            }
        return row


def _auc_or_half(scores: Sequence[float], labels: Sequence[bool]) -> float:
    value = metrics.auc(scores, labels)
    return 0.5 if value is None else value


def _ranking_metrics(
    ranks: Sequence[int | None], ks: Iterable[int], users: Sequence[str]
) -> tuple[dict, dict]:
    values, errors = {}, {}
    for k in ks:
        hits = [1.0 if rank is not None and rank <= k else 0.0 for rank in ranks]
        values[f"HR@{k}"] = metrics.hit_rate_at_k(ranks, k)
        errors[f"HR@{k}"] = metrics.mean_stderr(hits, users)
    # NDCG@1 equals HR@1 with one relevant item, so it is not reported twice.
    for k in ks:
        if k > 1:
            gains = [
                1.0 / math.log2(rank + 1) if rank is not None and rank <= k else 0.0
                for rank in ranks
            ]
            values[f"NDCG@{k}"] = metrics.ndcg_at_k(ranks, k)
            errors[f"NDCG@{k}"] = metrics.mean_stderr(gains, users)
    return values, errors


# ------------------------------------------------------------------------- ranking rows


class ItemRanker(Protocol):
    """A system that ranks items: one row of a results table.

    ``rank_all`` returns, per example, its top-``k`` catalog items with scores (best
    first), never an item of ``exclude``; ``score_candidates`` returns a score per
    candidate of each 1-of-N example, in the example's candidate order (higher is
    better). Examples arrive in batches; a ranker may ignore everything but
    ``example.user`` and ``example.history`` (e.g. SASRec).
    """

    def rank_all(
        self, examples: Sequence[Example], exclude: Sequence[frozenset[str]], k: int
    ) -> list[list[tuple[str, float]]]: ...

    def score_candidates(self, examples: Sequence[Example]) -> list[list[float]]: ...


def evaluate_ranker(
    name: str,
    ranker: ItemRanker,
    examples: Sequence[Example],
    protocol: EvalProtocol,
    batch_size: int = 256,
) -> EvaluationResults:
    """One ranking row: every ranking example of ``examples`` under ``protocol``.

    Non-ranking examples (yes/no, rating, text) are skipped. The model, the
    popularity and random baselines (and SASRec, fusion, ...) all go through here,
    so they share users, exclusion and metrics.
    """
    results = EvaluationResults(system=name, protocol=protocol)
    ranking = [e for e in examples if example_variant(e) in RANKING_VARIANTS]
    k = max(protocol.ks)
    for variant in RANKING_VARIANTS:
        chosen = [e for e in ranking if example_variant(e) == variant]
        for start in range(0, len(chosen), batch_size):
            batch = chosen[start : start + batch_size]
            if variant == "all_items":
                ranked = ranker.rank_all(batch, [protocol.excluded(e) for e in batch], k)
                fields = [
                    _all_items_fields(e, items, k) for e, items in zip(batch, ranked, strict=True)
                ]
            else:
                scores = ranker.score_candidates(batch)
                fields = [_candidate_fields(e, s, k) for e, s in zip(batch, scores, strict=True)]
            results.outcomes += [
                _outcome(e, variant, **values) for e, values in zip(batch, fields, strict=True)
            ]
    return results


def _all_items_fields(example: Example, items: Sequence[tuple[str, float]], k: int) -> dict:
    top = tuple((key, float(score)) for key, score in items[:k])
    return {"rank": metrics.rank_of(example.target or "", [key for key, _ in top]), "top": top}


def _candidate_fields(example: Example, scores: Sequence[float], k: int) -> dict:
    if example.target not in example.candidates:
        raise ValueError(
            f"{example.describe()}: target {example.target!r} is not among its candidates"
        )
    if len(scores) != len(example.candidates):
        raise ValueError(
            f"{example.describe()}: {len(scores)} scores for {len(example.candidates)} candidates"
        )
    target_score = scores[example.candidates.index(example.target)]
    # Pessimistic on ties: every other candidate scoring as high as the target ranks
    # before it, so a system that scores all candidates alike earns nothing.
    higher = sum(
        1
        for key, score in zip(example.candidates, scores, strict=True)
        if key != example.target and score >= target_score
    )
    order = sorted(zip(example.candidates, scores, strict=True), key=lambda pair: -pair[1])
    return {"rank": 1 + higher, "top": tuple((key, float(s)) for key, s in order[:k])}


class ModelRanker:
    """The model as an :class:`ItemRanker` (prompts built by :class:`Inference`).

    Answers are remembered per example object, so the rows built on the model's
    answers (fusion, prior-corrected scores) reuse the model row's decoding:
    ``rank_all`` always decodes ``max(k, list_length)`` items (the constrained
    search's top-k is a prefix of its top-``list_length``: beams evolve the same and
    an item found later never outscores the k kept) and returns the first ``k``.

    Args:
        inference: the model's :class:`Inference`.
        num_beams: beams of the constrained search (>= every list length asked).
        list_length: items decoded per all-item example at least (the longest list a
            row built on this one rescored; 0: just ``k``).
        length_normalize: rank by log-probability per token (the ablation row).
    """

    def __init__(
        self,
        inference: Inference,
        num_beams: int,
        list_length: int = 0,
        length_normalize: bool = False,
    ) -> None:
        self.inference = inference
        self.num_beams = num_beams
        self.list_length = list_length
        self.length_normalize = length_normalize
        self.truncated: dict[int, bool] = {}
        # id(example) -> (example kept alive, exclude, length asked, answer)
        self._lists: dict[int, tuple[Example, frozenset[str], int, list[tuple[str, float]]]] = {}
        self._scores: dict[int, tuple[Example, list[float]]] = {}

    def _prompts(self, examples: Sequence[Example]):
        prompts = self.inference.prompts(examples)
        for example, prompt in zip(examples, prompts, strict=True):
            self.truncated[id(example)] = prompt.truncated
        return prompts

    def rank_all(self, examples, exclude, k):
        length = max(k, self.list_length)
        todo = [
            i
            for i, (example, excluded) in enumerate(zip(examples, exclude, strict=True))
            if not self._known_list(example, frozenset(excluded), length)
        ]
        if todo:
            prompts = self._prompts([examples[i] for i in todo])
            ranked = self.inference.rank_items(
                prompts,
                length,
                max(self.num_beams, length),
                exclude=[exclude[i] for i in todo],
                length_normalize=self.length_normalize,
            )
            for i, items in zip(todo, ranked, strict=True):
                self._lists[id(examples[i])] = (examples[i], frozenset(exclude[i]), length, items)
        return [self._lists[id(e)][3][:k] for e in examples]

    def rank_all_guided(
        self,
        examples: Sequence[Example],
        exclude: Sequence[frozenset[str]],
        k: int,
        prior_keys: Sequence[str],
        prior_log_probs: torch.Tensor,
        weight: float,
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` items by (1 - weight) * log-probability + weight * log prior, the
        prior guiding the constrained search (``generation.ItemPrior``; D3-style).

        ``prior_log_probs`` is [examples, len(prior_keys)]. Weight 0 is :meth:`rank_all`
        (its remembered answers). Guided answers are not remembered: each weight is a
        new search.
        """
        if weight == 0:
            return self.rank_all(examples, exclude, k)
        if self.length_normalize:
            raise ValueError("a guided search ranks by summed log-probabilities, not per token")
        return self.inference.rank_items(
            self._prompts(examples),
            k,
            max(self.num_beams, k),
            exclude=exclude,
            prior=ItemPrior(prior_keys, prior_log_probs, weight),
        )

    def _known_list(self, example: Example, excluded: frozenset[str], length: int) -> bool:
        known = self._lists.get(id(example))
        if known is None or known[0] is not example or known[1] != excluded:
            return False
        return known[2] >= length

    def score_candidates(self, examples):
        todo = [e for e in examples if id(e) not in self._scores or self._scores[id(e)][0] is not e]
        if todo:
            prompts = self._prompts(todo)
            scores = self.inference.score_items(
                prompts, [e.candidates for e in todo], length_normalize=self.length_normalize
            )
            for example, values in zip(todo, scores, strict=True):
                self._scores[id(example)] = (example, values)
        return [list(self._scores[id(e)][1]) for e in examples]


# ------------------------------------------------------------- prior-corrected scores (PMI)

DEFAULT_ALPHA_GRID = tuple(round(0.1 * step, 1) for step in range(11))  # 0.0, 0.1, ..., 1.0


class ItemPriors:
    """log p(item | a user-free prompt of the example's template): the template's prior.

    The user-free prompt is :func:`inference.user_free_example` (no profile, empty
    history, same candidates). All-item templates: one prompt per template, every
    catalog item scored exactly once (teacher-forced log-likelihood, as
    ``Inference.score_items``); candidate templates: one prompt per (template,
    candidate list), its candidates scored. Both are cached.

    Args:
        inference: the model's :class:`Inference` (the same model as the row).
        prompt_set: the checkpoint's prompt set (the templates to render).
    """

    def __init__(self, inference: Inference, prompt_set: PromptSet) -> None:
        self.inference = inference
        self.prompt_set = prompt_set
        self._all: dict[str, dict[str, float]] = {}
        self._candidates: dict[tuple[str, tuple[str, ...]], list[float]] = {}

    def _prompt(self, example: Example):
        template = self.prompt_set.get(example.template_id)
        return self.inference.prompt(user_free_example(example, template, self.inference.catalog))

    def all_items(self, example: Example) -> dict[str, float]:
        """item key -> prior log-probability, for every catalog item (once per template)."""
        if example.template_id not in self._all:
            keys = list(self.inference.catalog.item_keys)
            scores = self.inference.score_items([self._prompt(example)], [keys])[0]
            self._all[example.template_id] = dict(zip(keys, scores, strict=True))
        return self._all[example.template_id]

    def candidates(self, example: Example) -> list[float]:
        """Prior log-probability of each candidate, in candidate order."""
        key = (example.template_id, tuple(example.candidates))
        if key not in self._candidates:
            prompt = self._prompt(example)
            self._candidates[key] = self.inference.score_items([prompt], [example.candidates])[0]
        return self._candidates[key]


@dataclass(frozen=True)
class PriorCase:
    """One example's candidate items with their model and prior log-probabilities.

    Attributes:
        candidates: item keys (all-item: the model's list, best first; direct: the
            prompt's candidates).
        log_probs: log p(item | prompt) of each.
        prior_log_probs: log p(item | user-free prompt) of each.
        target: the gold item key (a miss when not among the candidates).
    """

    candidates: tuple[str, ...]
    log_probs: tuple[float, ...]
    prior_log_probs: tuple[float, ...]
    target: str


def pmi_scores(
    log_probs: Sequence[float], prior_log_probs: Sequence[float], alpha: float
) -> list[float]:
    """log p(item | prompt) - alpha * log p(item | user-free prompt), elementwise.

    Example:
        >>> pmi_scores([-1.0, -2.0], [-0.5, -4.0], 0.5)
        [-0.75, 0.0]
    """
    return [s - alpha * p for s, p in zip(log_probs, prior_log_probs, strict=True)]


def pmi_rerank(case: PriorCase, alpha: float) -> list[tuple[str, float]]:
    """(candidate, PMI score), best first; equal scores keep the candidates' order."""
    scores = pmi_scores(case.log_probs, case.prior_log_probs, alpha)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return [(case.candidates[i], scores[i]) for i in order]


def choose_alpha(
    valid_cases: Sequence[PriorCase], grid: Sequence[float] = DEFAULT_ALPHA_GRID, k: int = 10
) -> tuple[float, dict[float, float]]:
    """The grid alpha with the highest NDCG@k on VALID cases (ties: the smaller alpha).

    Candidate cases rank pessimistically on ties, as the harness does.

    Returns:
        (best alpha, alpha -> valid NDCG@k).
    """
    if not valid_cases:
        raise ValueError("choose_alpha needs at least one valid case")
    if not grid:
        raise ValueError("choose_alpha needs a non-empty grid")
    scores = {}
    for alpha in grid:
        ranks = [_pessimistic_rank(case, alpha) for case in valid_cases]
        scores[alpha] = metrics.ndcg_at_k(ranks, k)
    return metrics.best_on_valid(scores), scores


def _pessimistic_rank(case: PriorCase, alpha: float) -> int | None:
    if case.target not in case.candidates:
        return None
    scores = pmi_scores(case.log_probs, case.prior_log_probs, alpha)
    target = scores[case.candidates.index(case.target)]
    return 1 + sum(
        1
        for key, s in zip(case.candidates, scores, strict=True)
        if key != case.target and s >= target
    )


class PMIRanker:
    """The model with prior-corrected scores, as an :class:`ItemRanker` (row "model+pmi").

    All-item examples: the model's constrained beam top-``num_candidates`` (under the
    protocol's exclusion) rescored by :func:`pmi_scores` with ``alpha_all`` (a
    rescoring of the beam's list, not a search under the corrected score: an item
    the beam did not reach stays a miss). Candidate examples: every candidate's
    score corrected with ``alpha_candidates``. Both alphas come from
    :func:`choose_alpha` on the valid split.
    """

    def __init__(
        self,
        lm: ModelRanker,
        priors: ItemPriors,
        alpha_all: float,
        alpha_candidates: float,
        num_candidates: int = 20,
    ) -> None:
        self.lm, self.priors = lm, priors
        self.alpha_all, self.alpha_candidates = alpha_all, alpha_candidates
        self.num_candidates = num_candidates

    def cases(self, examples, exclude, length: int | None = None) -> list[PriorCase]:
        """PriorCases of all-item examples: the model's list and its priors."""
        lists = self.lm.rank_all(examples, exclude, length or self.num_candidates)
        cases = []
        for example, items in zip(examples, lists, strict=True):
            prior = self.priors.all_items(example)
            cases.append(
                PriorCase(
                    tuple(key for key, _ in items),
                    tuple(score for _, score in items),
                    tuple(prior[key] for key, _ in items),
                    example.target or "",
                )
            )
        return cases

    def candidate_cases(self, examples) -> list[PriorCase]:
        """PriorCases of candidate examples: every candidate's score and prior."""
        scores = self.lm.score_candidates(examples)
        return [
            PriorCase(
                tuple(e.candidates), tuple(s), tuple(self.priors.candidates(e)), e.target or ""
            )
            for e, s in zip(examples, scores, strict=True)
        ]

    def rank_all(self, examples, exclude, k):
        cases = self.cases(examples, exclude, max(k, self.num_candidates))
        return [pmi_rerank(case, self.alpha_all)[:k] for case in cases]

    def score_candidates(self, examples):
        return [
            pmi_scores(case.log_probs, case.prior_log_probs, self.alpha_candidates)
            for case in self.candidate_cases(examples)
        ]


# ------------------------------------------------------------------------- evaluate


def evaluate(
    model: torch.nn.Module,
    tokenizer: SegmentTokenizer,
    catalog: EntityCatalog,
    examples: Sequence[Example],
    *,
    protocol: EvalProtocol,
    max_length: int,
    answer_budget: AnswerBudget | None = None,
    families: Sequence[str] | None = None,
    batch_size: int = 16,
    num_beams: int = 20,
    max_new_tokens: int = DEFAULT_TEXT_ANSWER_TOKENS,
    prompts: PromptSet | None = None,
    progress: bool = True,
    ranker: ModelRanker | None = None,
) -> EvaluationResults:
    """Score a model on task examples, batched, with one outcome per example.

    Before any decoding, every prompt is laid out once: a template whose candidates
    cannot fit ``max_length`` stops the run here, naming the template and both lengths.

    Args:
        model: a GLM (optionally PEFT-wrapped), put in eval mode here.
        tokenizer: the checkpoint's tokenizer.
        catalog: the entity catalog the items come from (builds the item trie).
        examples: evaluation examples (pretraining documents are rejected).
        protocol: cut-offs, exclusion setting and history, rating scale, seed.
        max_length: the training sequence length.
        answer_budget: the training answer budget (default: the catalog's, text
            answers ``max_new_tokens``).
        families: task families to keep (None: all families present).
        batch_size: prompts per forward/generation batch.
        num_beams: beams of the constrained item search; must be >= max(ks).
        max_new_tokens: generation budget for text answers (ratings get
            RATING_MAX_NEW_TOKENS).
        prompts: the checkpoint's prompt set, for the answer words of yes/no templates
            (None: every yes/no template answers "yes" / "no").
        progress: show a tqdm bar over examples.
        ranker: the model's :class:`ModelRanker` to rank with (its ``inference`` then
            answers every family), so rows built on the model's answers (fusion,
            prior-corrected scores) reuse them; None: one is made here.

    Returns:
        The model's :class:`EvaluationResults` (``system="model"``).

    Raises:
        ValueError: a pretraining document, an example without target, a rating
            target that is not a number, or ``num_beams < max(ks)``; the message
            names the example. PromptTooLongError: candidates that cannot fit.
    """
    if num_beams < max(protocol.ks):
        raise ValueError(f"num_beams ({num_beams}) must be >= max(ks) ({max(protocol.ks)})")
    selected = [e for e in examples if families is None or e.task in families]
    if not selected:
        raise ValueError(f"no examples to evaluate (families={families})")
    for example in selected:
        if example.target is None or example.answer_type is None:
            raise ValueError(f"{example.describe()}: not a task example (no target/answer type)")
        if example.answer_type == "rating":
            _parse_target_rating(example)
    if ranker is None:
        if answer_budget is None:
            answer_budget = AnswerBudget.for_catalog(catalog, tokenizer, text=max_new_tokens)
        inference = Inference(
            model, tokenizer, catalog, max_length=max_length, answer_budget=answer_budget
        )
        ranker = ModelRanker(inference, num_beams)
    inference = ranker.inference
    answer_budget = inference.answer_budget
    check_prompts_fit(
        (tokenizer.tokenize_example(e) for e in selected),
        inference.special,
        answer_budget,
        max_length,
        where="evaluation (the checkpoint's data.max_length)",
    )

    bar = tqdm(total=len(selected), desc="evaluate", unit="example", disable=not progress)
    ranking = [e for e in selected if example_variant(e) in RANKING_VARIANTS]
    ranked = evaluate_ranker("model", _Progress(ranker, bar), ranking, protocol, batch_size)
    by_example = {
        id(e): outcome for e, outcome in zip(_ranking_order(ranking), ranked.outcomes, strict=True)
    }
    for example in ranking:
        outcome = by_example[id(example)]
        by_example[id(example)] = dataclasses.replace(
            outcome, truncated=ranker.truncated[id(example)]
        )

    others = [e for e in selected if example_variant(e) not in RANKING_VARIANTS]
    for variant in ("yesno", "rating", "text"):
        chosen = [e for e in others if example_variant(e) == variant]
        for start in range(0, len(chosen), batch_size):
            batch = chosen[start : start + batch_size]
            batch_prompts = inference.prompts(batch)
            if variant == "yesno":
                fields = _answer_yes_no(inference, batch_prompts, batch, prompts)
            elif variant == "rating":
                fields = [
                    {"rating": value, "text": text}
                    for text, value in inference.ratings(batch_prompts)
                ]
            else:
                texts = inference.texts(batch_prompts, max_new_tokens, seed=protocol.seed)
                fields = [{"text": text} for text in texts]
            for example, prompt, values in zip(batch, batch_prompts, fields, strict=True):
                by_example[id(example)] = _outcome(
                    example, variant, truncated=prompt.truncated, **values
                )
            bar.update(len(batch))
    bar.close()
    return EvaluationResults(
        system="model", protocol=protocol, outcomes=[by_example[id(e)] for e in selected]
    )


class _Progress:
    """An ItemRanker wrapper that advances a progress bar."""

    def __init__(self, ranker: ItemRanker, bar: tqdm) -> None:
        self.ranker, self.bar = ranker, bar

    def rank_all(self, examples, exclude, k):
        result = self.ranker.rank_all(examples, exclude, k)
        self.bar.update(len(examples))
        return result

    def score_candidates(self, examples):
        result = self.ranker.score_candidates(examples)
        self.bar.update(len(examples))
        return result


def _ranking_order(examples: Sequence[Example]) -> list[Example]:
    """The order :func:`evaluate_ranker` emits outcomes in."""
    return [e for v in RANKING_VARIANTS for e in examples if example_variant(e) == v]


def _outcome(example: Example, variant: str, **fields: object) -> ExampleOutcome:
    return ExampleOutcome(
        family=example.task,
        template_id=example.template_id,
        seen=example.seen,
        variant=variant,
        user=example.user,
        target=example.target or "",
        **fields,
    )


def _parse_target_rating(example: Example) -> float:
    try:
        return float(example.target or "")
    except ValueError:
        raise ValueError(
            f"{example.describe()}: field 'target' {example.target!r} is not a number (rating example)"
        ) from None


def _answer_yes_no(
    inference: Inference,
    prompts: Sequence,
    batch: Sequence[Example],
    prompt_set: PromptSet | None,
) -> list[dict]:
    """Log-likelihoods of the template's two answer words; a tie counts as wrong."""
    words = []
    for example in batch:
        pair = DEFAULT_YES_NO_WORDS
        if prompt_set is not None:
            pair = tuple(prompt_set.get(example.template_id).answer_words) or pair
        if (example.target or "").strip().lower() not in (w.lower() for w in pair):
            raise ValueError(
                f"{example.describe()}: answer {example.target!r} is none of the template's "
                f"answer words {list(pair)}"
            )
        words.append((pair[0], pair[1]))
    scores = inference.yes_no_scores(prompts, batch, words)
    fields = []
    for example, (positive, negative), pair in zip(batch, scores, words, strict=True):
        is_positive = (example.target or "").strip().lower() == pair[0].lower()
        gold, other = (positive, negative) if is_positive else (negative, positive)
        fields.append(
            {"correct": gold > other, "yes_score": positive - negative, "positive": is_positive}
        )
    return fields


def history_items(splits, split: str) -> dict[str, frozenset[str]]:
    """user -> every item the user interacted with before the ``split`` target.

    Test: the train events and the valid target; valid: the train events. Short users
    (all events in one split): their events before their target.
    """
    history = {}
    for user in splits.split_users(split):
        position = splits.target_index(split, user)
        history[user] = frozenset(event.item for event in splits.sequences[user][:position])
    return history
