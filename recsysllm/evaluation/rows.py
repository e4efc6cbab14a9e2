"""The ranking rows a results table carries beside the model: SASRec, fusion,
fusion-rescore, model+pmi, model+lennorm.

Every row goes through ``evaluate_ranker`` with the model's examples and
:class:`EvalProtocol`, so it has the model row's users, exclusion, metrics, standard
errors and diversity columns:

- ``SASRec``: ``sasrec.fit_cached`` on the same splits (train events, early stopping
  on valid), weights cached.
- ``fusion``: (1 - w) * LM log-probability + w * SASRec log-softmax; all items: the
  model's constrained beam search guided by SASRec (each trie prefix ranked by its
  fused LM score + w * log of SASRec's mass below it, D3-style), one search per valid
  grid weight; direct: every candidate; w per variant.
- ``fusion-rescore`` (all items only): the same score over the model's own, unguided
  constrained-beam top-N (a rescoring: an item the beam missed stays a miss).
- ``model+pmi``: log p(item given the prompt) - alpha * log p(item given the user-free
  prompt of the template), over the beam's top-N (all items: exact priors, a rescoring,
  not a new search) or every candidate (direct); alpha per variant.
- ``model+lennorm``: the model ranking by log-probability per token (the ablation).

Weights and alphas are chosen on the VALID split's examples only (the evaluated
users' valid targets, or a seeded sample of them), over a grid, by NDCG@max(ks); a
variant without valid examples keeps weight/alpha 0 (the model alone) and says so.
The choices, the grids' valid NDCG and the valid sample are returned for results.json.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from recsysllm.config import FUSION_GRID
from recsysllm.data.splits import RecSplits
from recsysllm.evaluation.evaluator import (
    RANKING_VARIANTS,
    EvalProtocol,
    EvaluationResults,
    ItemPriors,
    ModelRanker,
    PMIRanker,
    choose_alpha,
    evaluate_ranker,
    example_variant,
)
from recsysllm.evaluation.fusion import (
    DEFAULT_GRID,
    FusionRanker,
    GuidedFusionRanker,
    candidate_cases,
    choose_guided_weight,
    choose_weight,
    lm_list_cases,
)
from recsysllm.evaluation.sasrec import SASRecConfig, SASRecItemRanker, fit_cached
from recsysllm.prompts import PromptSet
from recsysllm.schema import Example

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowSettings:
    """Which extra rows to build, and how.

    Attributes:
        sasrec: the SASRec row (and what fusion needs).
        fusion: the LM + SASRec fusion row, SASRec guiding the item search (needs
            ``sasrec``).
        fusion_rescore: with ``fusion``, also the "fusion-rescore" row (the model's
            unguided top-N rescored; cheap: it reuses the model's answers).
        fusion_grid: the weights the guided search tries on valid (one valid search each).
        pmi: the prior-corrected "model+pmi" row.
        length_norm: the "model+lennorm" ablation row.
        sasrec_config: SASRec's architecture and training (caps included).
        sasrec_seed: SASRec's seed.
        sasrec_cache_dir: where SASRec weights are cached (None: not cached).
        num_candidates: the model's list length that fusion and PMI rescore
            (the model's beams).
        batch_size: examples per batch when building valid cases.
    """

    sasrec: bool = True
    fusion: bool = True
    fusion_rescore: bool = True
    fusion_grid: tuple[float, ...] = FUSION_GRID
    pmi: bool = False
    length_norm: bool = False
    sasrec_config: SASRecConfig = field(default_factory=SASRecConfig)
    sasrec_seed: int = 0
    sasrec_cache_dir: Path | None = None
    num_candidates: int = 20
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not self.fusion_grid or not all(0.0 <= w <= 1.0 for w in self.fusion_grid):
            raise ValueError(f"fusion_grid: weights must be in [0, 1], got {self.fusion_grid}")

    @property
    def needs_valid(self) -> bool:
        return (self.sasrec and self.fusion) or self.pmi


def extra_rows(
    *,
    lm: ModelRanker,
    splits: RecSplits,
    split: str,
    examples: Sequence[Example],
    protocol: EvalProtocol,
    valid_examples: Sequence[Example],
    valid_protocol: EvalProtocol,
    settings: RowSettings,
    prompt_set: PromptSet | None = None,
    report: Callable[[str], None] | None = None,
) -> tuple[dict[str, EvaluationResults], dict[str, Any]]:
    """The extra rows on ``examples`` (the model row's), and their facts for results.json.

    Args:
        lm: the model row's ranker (``list_length >= settings.num_candidates``, so the
            rescoring rows reuse its decoding).
        splits: the data's splits (SASRec trains on them).
        split: the evaluated split, "valid" or "test".
        examples: the evaluated examples (non-ranking ones are skipped).
        protocol: the model row's protocol.
        valid_examples: VALID-split ranking examples to choose weights on.
        valid_protocol: their protocol (the valid split's history).
        settings: which rows.
        prompt_set: the checkpoint's templates (needed by ``pmi``).
        report: called with one line per step (what is being built, what was chosen).

    Returns:
        (row name -> results, {"SASRec": ..., "fusion": ..., "fusion-rescore": ...,
        "model+pmi": ..., "model+lennorm": ...} facts of the rows built).
    """
    rows: dict[str, EvaluationResults] = {}
    facts: dict[str, Any] = {}

    def say(message: str) -> None:
        logger.info(message)
        if report is not None:
            report(message)

    ranking = [e for e in examples if example_variant(e) in RANKING_VARIANTS]
    if not ranking:
        return rows, facts
    valid = [e for e in valid_examples if example_variant(e) in RANKING_VARIANTS]
    valid_facts = {
        "split": "valid",
        "examples": len(valid),
        "users": len({e.user for e in valid}),
        "same_as_evaluated": split == "valid",
    }
    k = max(protocol.ks)
    if settings.sasrec:
        say(
            f"SASRec: weights from {settings.sasrec_cache_dir} or trained (seed {settings.sasrec_seed})"
        )
        ranker, facts["SASRec"] = fit_cached(
            splits, settings.sasrec_config, settings.sasrec_seed, settings.sasrec_cache_dir
        )
        sasrec_facts = facts["SASRec"]
        say(
            f"SASRec: {sasrec_facts['cache']}, {sasrec_facts['epochs']} epochs, stopped by "
            f"{sasrec_facts['stopped']}"
            + (" (capped: a lower bound)" if sasrec_facts["capped"] else "")
        )
        sasrec = SASRecItemRanker.for_split(ranker, splits, split)
        rows["SASRec"] = evaluate_ranker("SASRec", sasrec, ranking, protocol, settings.batch_size)
        if settings.fusion:
            _fusion_rows(
                lm, sasrec, SASRecItemRanker.for_split(ranker, splits, "valid"), ranking,
                protocol, valid, valid_protocol, valid_facts, settings, rows, facts, say,
            )  # fmt: skip
    if settings.pmi:
        if prompt_set is None:
            raise ValueError("the model+pmi row needs the checkpoint's prompt set")
        say(f"model+pmi: priors and alpha on {len(valid)} valid examples")
        priors = ItemPriors(lm.inference, prompt_set)
        chooser = PMIRanker(lm, priors, 0.0, 0.0, settings.num_candidates)
        alphas, grids = _choose_per_variant(
            valid,
            valid_protocol,
            settings.batch_size,
            all_items=chooser.cases,
            candidates=chooser.candidate_cases,
            choose=lambda cases: choose_alpha(cases, k=k),
        )
        pmi = PMIRanker(
            lm, priors, alphas["all_items"], alphas["candidates"], settings.num_candidates
        )
        say(f"model+pmi: alphas {alphas}")
        rows["model+pmi"] = evaluate_ranker(
            "model+pmi", pmi, ranking, protocol, settings.batch_size
        )
        facts["model+pmi"] = {
            "score": "log p(item | prompt) - alpha * log p(item | user-free prompt of the "
            "same template: no profile, empty history, same candidates)",
            "all_items": f"the model's constrained-beam top-{settings.num_candidates} "
            "rescored with exact priors (one prior per template over every catalog item); "
            "not a search under the corrected score",
            "alphas": alphas,
            "valid_ndcg": grids,
            "metric": f"NDCG@{k}",
            "chosen_on": valid_facts,
        }
    if settings.length_norm:
        say("model+lennorm: decoding with length normalisation")
        normalized = ModelRanker(lm.inference, lm.num_beams, length_normalize=True)
        rows["model+lennorm"] = evaluate_ranker(
            "model+lennorm", normalized, ranking, protocol, settings.batch_size
        )
        facts["model+lennorm"] = {
            "score": "log-probability / (item tokens + [eop]), in the beam search and for "
            "candidates (ablation; the model row sums)"
        }
    return rows, facts


def _fusion_rows(
    lm: ModelRanker,
    sasrec: SASRecItemRanker,
    sasrec_valid: SASRecItemRanker,
    ranking: Sequence[Example],
    protocol: EvalProtocol,
    valid: Sequence[Example],
    valid_protocol: EvalProtocol,
    valid_facts: dict[str, Any],
    settings: RowSettings,
    rows: dict[str, EvaluationResults],
    facts: dict[str, Any],
    say: Callable[[str], None],
) -> None:
    """The "fusion" row (guided search) and, when asked, "fusion-rescore", with facts."""
    k = max(protocol.ks)
    valid_all = [e for e in valid if example_variant(e) == "all_items"]
    # The candidate weight (both rows score candidates alike) and the rescoring row's
    # all-item weight come from exact valid cases.
    exact_valid = [e for e in valid if settings.fusion_rescore or example_variant(e) != "all_items"]
    say(f"fusion: choosing the weights on {len(valid)} valid examples")
    weights, grids = _choose_per_variant(
        exact_valid,
        valid_protocol,
        settings.batch_size,
        all_items=lambda batch, exclude: lm_list_cases(
            lm, sasrec_valid, batch, exclude, settings.num_candidates
        ),
        candidates=lambda batch: candidate_cases(lm, sasrec_valid, batch),
        choose=lambda cases: choose_weight(cases, k=k),
    )
    guided_weight = 0.0
    guided_grid: dict[str, float] | str = "no valid examples of this variant: 0 (the model alone)"
    if valid_all:
        say(
            f"fusion: guided searches of {len(valid_all)} valid examples, weights {settings.fusion_grid}"
        )
        guided_weight, scores = choose_guided_weight(
            lambda weight: GuidedFusionRanker(lm, sasrec_valid, weight),
            valid_all,
            valid_protocol,
            settings.fusion_grid,
            k=k,
            batch_size=settings.batch_size,
        )
        guided_grid = {f"{weight:g}": score for weight, score in scores.items()}
    chosen = {"all_items": guided_weight, "candidates": weights["candidates"]}
    say(f"fusion: weights {chosen}")
    fusion = GuidedFusionRanker(lm, sasrec, guided_weight, weights["candidates"])
    rows["fusion"] = evaluate_ranker("fusion", fusion, ranking, protocol, settings.batch_size)
    facts["fusion"] = {
        "score": "(1 - w) * LM log-probability + w * SASRec log-softmax",
        "all_items": f"guided search: the model's constrained beam search ({lm.num_beams} "
        "beams) ranks each trie prefix by (1 - w) * its LM log-probability + w * log of "
        "SASRec's probability mass over the eligible items below it (D3-style); a "
        "finished item scores exactly the fused score",
        "candidates": "every candidate scored exactly",
        "weights": chosen,
        "valid_ndcg": {"all_items": guided_grid, "candidates": grids["candidates"]},
        "grid": {"all_items": list(settings.fusion_grid), "candidates": list(DEFAULT_GRID)},
        "metric": f"NDCG@{k}",
        "chosen_on": valid_facts,
    }
    ranking_all = [e for e in ranking if example_variant(e) == "all_items"]
    if settings.fusion_rescore and ranking_all:
        rescore = FusionRanker(lm, sasrec, weights["all_items"], settings.num_candidates)
        rows["fusion-rescore"] = evaluate_ranker(
            "fusion-rescore", rescore, ranking_all, protocol, settings.batch_size
        )
        facts["fusion-rescore"] = {
            "score": "(1 - w) * LM log-probability + w * SASRec log-softmax",
            "all_items": f"the model's unguided constrained-beam top-{settings.num_candidates} "
            "rescored (a target outside it stays a miss); all-item examples only",
            "weights": {"all_items": weights["all_items"]},
            "valid_ndcg": {"all_items": grids["all_items"]},
            "grid": {"all_items": list(DEFAULT_GRID)},
            "metric": f"NDCG@{k}",
            "chosen_on": valid_facts,
        }


def _choose_per_variant(
    valid: Sequence[Example],
    protocol: EvalProtocol,
    batch_size: int,
    *,
    all_items: Callable[[Sequence[Example], list[frozenset[str]]], list],
    candidates: Callable[[Sequence[Example]], list],
    choose: Callable[[list], tuple[float, dict[float, float]]],
) -> tuple[dict[str, float], dict[str, dict[str, float] | str]]:
    """One value per ranking variant, chosen on that variant's valid cases.

    Returns:
        ({"all_items": value, "candidates": value}, per variant: grid value -> valid
        metric, or why nothing was chosen).
    """
    chosen: dict[str, float] = {}
    grids: dict[str, dict[str, float] | str] = {}
    for variant in RANKING_VARIANTS:
        members = [e for e in valid if example_variant(e) == variant]
        if not members:
            chosen[variant] = 0.0
            grids[variant] = "no valid examples of this variant: 0 (the model alone)"
            continue
        cases = []
        with tqdm(total=len(members), desc=f"valid {variant}", unit="example") as bar:
            for start in range(0, len(members), batch_size):
                batch = members[start : start + batch_size]
                if variant == "all_items":
                    cases += all_items(batch, [protocol.excluded(e) for e in batch])
                else:
                    cases += candidates(batch)
                bar.update(len(batch))
        best, scores = choose(cases)
        chosen[variant] = best
        grids[variant] = {f"{value:g}": score for value, score in scores.items()}
    return chosen, grids
