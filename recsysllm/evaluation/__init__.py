"""Evaluation: metrics, baselines, the evaluation harness and its reports (DESIGN.md section 8).

``evaluate`` scores a model on task examples under an ``EvalProtocol``;
``evaluate_ranker`` scores any ``ItemRanker`` (a baseline, SASRec, a fusion) on the
same examples under the same protocol; ``evaluate_baselines`` runs the reference
systems; ``write_reports`` writes results.json, outcomes.jsonl, a markdown table
and a PNG plot.
"""

from recsysllm.evaluation.baselines import evaluate_baselines, training_statistics
from recsysllm.evaluation.evaluator import (
    EvalProtocol,
    EvaluationResults,
    ExampleOutcome,
    ItemRanker,
    evaluate,
    evaluate_ranker,
    history_items,
)
from recsysllm.evaluation.report import write_reports

__all__ = [
    "EvalProtocol",
    "EvaluationResults",
    "ExampleOutcome",
    "ItemRanker",
    "evaluate",
    "evaluate_baselines",
    "evaluate_ranker",
    "history_items",
    "training_statistics",
    "write_reports",
]
