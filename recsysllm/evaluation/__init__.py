"""Evaluation: metrics, baselines, the evaluation harness and its reports (DESIGN.md section 8).

``evaluate`` scores a model on task examples; ``evaluate_baselines`` scores the
reference systems on the same examples; ``write_reports`` writes results.json,
a markdown table and a PNG plot.
"""

from recsysllm.evaluation.baselines import evaluate_baselines, training_statistics
from recsysllm.evaluation.evaluator import EvaluationResults, ExampleOutcome, evaluate
from recsysllm.evaluation.report import write_reports

__all__ = [
    "EvaluationResults",
    "ExampleOutcome",
    "evaluate",
    "evaluate_baselines",
    "training_statistics",
    "write_reports",
]
