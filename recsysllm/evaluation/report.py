"""Evaluation reports: results.json, a markdown table and a PNG plot, written atomically.

The JSON holds everything needed to read a number later: metrics per family x
variant x template and aggregated over seen / unseen / all templates, counts,
unparseable counts and the rule that scored them, the checkpoint, the config,
the catalog hash, the seed, and the baseline systems on the same examples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recsysllm.evaluation.evaluator import EvaluationResults
from recsysllm.evaluation.metrics import UNPARSEABLE_RATING_RULE
from recsysllm.files import atomic_write

RANKING_VARIANTS = ("all_items", "candidates")


def results_document(
    model: EvaluationResults,
    baselines: Mapping[str, EvaluationResults],
    metadata: Mapping[str, Any],
) -> dict[str, Any]:
    """The results.json document.

    Args:
        model: the model's results.
        baselines: system name -> results on the same examples.
        metadata: run facts to record verbatim (checkpoint, config, catalog_hash,
            seed, split, prompts, ...). Must be JSON-serialisable.
    """
    return {
        **metadata,
        "protocol": {
            "ks": list(model.ks),
            "exclude_history": model.exclude_history,
            "rating_scale": list(model.rating_scale),
            "unparseable_rating_rule": UNPARSEABLE_RATING_RULE,
            "aggregation": "seen/unseen/all rows pool the examples of their templates "
            "(micro-average); BLEU-4 is corpus BLEU over the pooled examples",
        },
        "model": model.to_dict(),
        "baselines": {name: results.to_dict() for name, results in baselines.items()},
    }


def markdown_report(document: Mapping[str, Any]) -> str:
    """Markdown tables from a results document: aggregates with baselines, then per template."""
    lines = ["# Evaluation results", ""]
    for key in ("checkpoint", "split", "prompts", "catalog_hash", "seed"):
        if key in document:
            lines.append(f"- {key}: `{document[key]}`")
    lines += [f"- unparseable ratings: {document['protocol']['unparseable_rating_rule']}", ""]

    systems = {"model": document["model"], **document["baselines"]}
    groups = sorted({(row["family"], row["variant"]) for row in document["model"]["aggregated"]})
    for family, variant in groups:
        rows = [
            (name, row)
            for split in ("seen", "unseen", "all")
            for name, summary in systems.items()
            for row in summary["aggregated"]
            if (row["family"], row["variant"], row["split"]) == (family, variant, split)
        ]
        metric_names = list(rows[0][1]["metrics"])
        lines += [f"## {family} ({variant})", ""]
        header = ["system", "split", "n", *metric_names]
        if variant == "rating":
            header.append("unparseable")
        lines += [_md_row(header), _md_row(["---"] * len(header))]
        for name, row in rows:
            cells = [name, row["split"], str(row["count"])]
            cells += [_format(row["metrics"].get(m)) for m in metric_names]
            if variant == "rating":
                cells.append(str(row["unparseable"]))
            lines.append(_md_row(cells))
        lines.append("")

    lines += ["## Model per template", ""]
    header = ["family", "variant", "template", "split", "n", "unparseable", "metrics"]
    lines += [_md_row(header), _md_row(["---"] * len(header))]
    for row in document["model"]["per_template"]:
        shown = ", ".join(f"{m} {_format(v)}" for m, v in row["metrics"].items())
        cells = [row["family"], row["variant"], row["template_id"], row["split"]]
        cells += [str(row["count"]), str(row["unparseable"]), shown]
        lines.append(_md_row(cells))
    return "\n".join(lines) + "\n"


def plot_ranking(document: Mapping[str, Any], path: str | os.PathLike) -> None:
    """PNG: HR@k / NDCG@k per family (ranking variants), model seen vs unseen, baselines dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted(
        {
            (row["family"], row["variant"])
            for row in document["model"]["aggregated"]
            if row["variant"] in RANKING_VARIANTS
        }
    )
    figure, axes = plt.subplots(
        1, max(1, len(groups)), figsize=(5 * max(1, len(groups)), 4), squeeze=False
    )
    if not groups:
        axes[0][0].text(0.5, 0.5, "no ranking task evaluated", ha="center", va="center")
        axes[0][0].set_axis_off()
    for axis, (family, variant) in zip(axes[0], groups, strict=False):
        lines = [("model", split, "-") for split in ("seen", "unseen")]
        lines += [(name, "all", "--") for name in document["baselines"]]
        summaries = {"model": document["model"], **document["baselines"]}
        metric_names: list[str] = []
        for name, split, style in lines:
            row = next(
                (
                    r
                    for r in summaries[name]["aggregated"]
                    if (r["family"], r["variant"], r["split"]) == (family, variant, split)
                ),
                None,
            )
            if row is None:
                continue
            # The history-excluded variant stays in the tables; the plot keeps to the protocol's default.
            metric_names = metric_names or [m for m in row["metrics"] if "excl." not in m]
            values = [row["metrics"].get(m, float("nan")) for m in metric_names]
            label = f"{name} ({split})" if name == "model" else name
            axis.plot(metric_names, values, linestyle=style, marker="o", label=label)
        axis.set_title(f"{family} ({variant})")
        axis.set_ylim(bottom=0)  # top follows the data: HR@k of 0.02 must stay readable
        axis.tick_params(axis="x", labelrotation=45)
        axis.legend(fontsize="small")
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)


def write_reports(
    model: EvaluationResults,
    baselines: Mapping[str, EvaluationResults],
    metadata: Mapping[str, Any],
    json_path: str | os.PathLike,
) -> dict[str, Path]:
    """Write results.json at ``json_path`` and the .md and .png next to it.

    Returns:
        {"json": ..., "markdown": ..., "plot": ...} paths written.
    """
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    document = results_document(model, baselines, metadata)
    markdown_path = json_path.with_suffix(".md")
    plot_path = json_path.with_suffix(".png")
    text = json.dumps(document, indent=2, sort_keys=False, allow_nan=False)
    atomic_write(json_path, text + "\n")
    markdown = markdown_report(document)
    atomic_write(markdown_path, markdown)
    plot_ranking(document, plot_path)
    return {"json": json_path, "markdown": markdown_path, "plot": plot_path}


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
