"""Evaluation reports: results.json, outcomes.jsonl, a markdown table and a PNG plot.

The JSON holds everything needed to read a number later: metrics and their standard
errors per family x variant x template and aggregated over seen / unseen / all
templates, counts (examples, users, truncated prompts, unparseable and out-of-scale
ratings) and the rule that scored them, the exclusion setting every row shares, the
checkpoint, the settings used, the user sample, the catalog hash, the seed, and the
baseline systems on the same examples. outcomes.jsonl holds one line per (system,
example): user, family, template, target, top-k with scores, rank or parsed value.
Every file is written to a temp path and renamed.
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
OUTCOMES_FILENAME = "outcomes.jsonl"
# (key of a row's "diversity", markdown column); the first column is coverage@k.
DIVERSITY_COLUMNS = (
    ("coverage", "coverage"),
    ("top item share", "top item share"),
    ("top 1% share", "top 1% share"),
    ("largest prefix group share", "largest prefix group share"),
    ("Gini", "Gini"),
)


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
    protocol = model.protocol
    for name, results in baselines.items():
        if results.protocol is not protocol and (
            results.protocol.exclude_history != protocol.exclude_history
            or results.protocol.ks != protocol.ks
        ):
            raise ValueError(
                f"baseline {name!r} ran under another protocol than the model "
                "(exclusion or cut-offs differ): every row of a table must share one"
            )
    return {
        **metadata,
        "protocol": {
            "ks": list(protocol.ks),
            "exclude_history": protocol.exclude_history,
            "exclusion": protocol.exclusion_label,
            "rating_scale": list(protocol.rating_scale),
            "unparseable_rating_rule": UNPARSEABLE_RATING_RULE,
            "standard_errors": "users are clusters (one user answers several templates): "
            "per-example means (HR, NDCG, accuracy, MAE): cluster-robust SE of the mean; "
            "RMSE: delta method; BLEU-4, ROUGE, AUC: seeded bootstrap over users "
            f"(200 resamples, seed {protocol.seed})",
            "ties": "a candidate scoring as high as the target ranks before it; a yes/no tie is wrong",
            "aggregation": "seen/unseen/all rows pool the examples of their templates "
            "(micro-average); BLEU-4 is corpus BLEU over the pooled examples",
        },
        "model": model.to_dict(),
        "baselines": {name: results.to_dict() for name, results in baselines.items()},
    }


def markdown_report(document: Mapping[str, Any]) -> str:
    """Markdown tables from a results document: aggregates with baselines, then per template."""
    protocol = document["protocol"]
    lines = ["# Evaluation results", ""]
    lines += [f"**Every row: {protocol['exclusion']}.** Values are metric ± standard error.", ""]
    keys = ("checkpoint", "base_model", "untrained", "split", "prompts", "catalog_hash", "seed")
    for key in keys:
        if key in document:
            lines.append(f"- {key}: `{document[key]}`")
    sample = document.get("user_sample")
    if sample:
        lines.append(f"- users: {sample['description']}")
    lines += [f"- unparseable ratings: {protocol['unparseable_rating_rule']}", ""]

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
        header = ["system", "split", "n", "users", *metric_names]
        if variant == "rating":
            header += ["unparseable", "out of scale"]
        diversity_k = next((r["diversity"]["k"] for _, r in rows if "diversity" in r), None)
        if diversity_k is not None:
            header += [f"coverage@{diversity_k}", *(label for _, label in DIVERSITY_COLUMNS[1:])]
        lines += [_md_row(header), _md_row(["---"] * len(header))]
        for name, row in rows:
            cells = [name, row["split"], str(row["count"]), str(row["users"])]
            cells += [_format(row["metrics"].get(m), row["stderr"].get(m)) for m in metric_names]
            if variant == "rating":
                cells += [str(row["unparseable"]), str(row["out_of_scale"])]
            if diversity_k is not None:
                diversity = row.get("diversity", {})
                cells += [_format(diversity.get(key)) for key, _ in DIVERSITY_COLUMNS]
            lines.append(_md_row(cells))
        lines.append("")
    lines += _row_notes(document.get("rows", {}))

    lines += ["## Model per template", ""]
    header = ["family", "variant", "template", "split", "n", "truncated prompts", "unparseable"]
    header.append("metrics")
    lines += [_md_row(header), _md_row(["---"] * len(header))]
    for row in document["model"]["per_template"]:
        shown = ", ".join(
            f"{m} {_format(v, row['stderr'].get(m))}" for m, v in row["metrics"].items()
        )
        cells = [row["family"], row["variant"], row["template_id"], row["split"]]
        cells += [str(row["count"]), str(row["truncated"]), str(row["unparseable"]), shown]
        lines.append(_md_row(cells))
    return "\n".join(lines) + "\n"


def _row_notes(facts: Mapping[str, Any]) -> list[str]:
    """One line per extra row: how it was made and what was chosen on valid."""
    lines = []
    sasrec = facts.get("SASRec")
    if sasrec:
        bound = (
            f" **Capped ({sasrec['stopped']}): a lower bound of SASRec.**"
            if sasrec["capped"]
            else ""
        )
        lines.append(
            f"- SASRec: seed {sasrec['seed']}, {sasrec['epochs']} epochs, best valid "
            f"NDCG@{sasrec['config']['valid_k']} at epoch {sasrec['best_epoch']}, stopped by "
            f"{sasrec['stopped']}; weights {sasrec['cache']} "
            f"(`{sasrec['cache_entry']}`).{bound}"
        )
    for name, key in (
        ("fusion", "weights"),
        ("fusion-rescore", "weights"),
        ("model+pmi", "alphas"),
    ):
        if name in facts:
            chosen = facts[name][key]
            valid = facts[name]["chosen_on"]
            grids = facts[name].get("valid_ndcg", {})
            # A variant without valid examples had nothing chosen (its value is the
            # model-alone default, and its grid entry says why): not listed as chosen.
            values = ", ".join(
                f"{label} {chosen[variant]:g}"
                for variant, label in (("all_items", "all items"), ("candidates", "candidates"))
                if variant in chosen and not isinstance(grids.get(variant), str)
            )
            lines.append(
                f"- {name}: {facts[name]['score']}; all items: {facts[name]['all_items']}; "
                f"{key} chosen on the valid split ({valid['examples']} examples, "
                f"{valid['users']} users) by {facts[name]['metric']}: {values}."
            )
    if "model+lennorm" in facts:
        lines.append(f"- model+lennorm: {facts['model+lennorm']['score']}.")
    return ["## Rows", "", *lines, ""] if lines else []


def plot_ranking(document: Mapping[str, Any], path: str | os.PathLike) -> None:
    """PNG: HR@k / NDCG@k per family (ranking variants) with standard-error bars, model
    seen vs unseen, baselines dashed; each panel's title states the exclusion setting."""
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
            metric_names = metric_names or list(row["metrics"])
            values = [_number(row["metrics"].get(m)) for m in metric_names]
            errors = [_number(row["stderr"].get(m), 0.0) for m in metric_names]
            label = f"{name} ({split})" if name == "model" else name
            axis.errorbar(
                metric_names,
                values,
                yerr=errors,
                linestyle=style,
                marker="o",
                capsize=3,
                label=label,
            )
        axis.set_title(f"{family} ({variant})\n{document['protocol']['exclusion']}", fontsize=9)
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
        {"json": ..., "outcomes": ..., "markdown": ..., "plot": ...} paths written;
        outcomes.jsonl sits in the same directory.
    """
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    document = results_document(model, baselines, metadata)
    markdown_path = json_path.with_suffix(".md")
    plot_path = json_path.with_suffix(".png")
    outcomes_path = json_path.parent / OUTCOMES_FILENAME
    text = json.dumps(document, indent=2, sort_keys=False, allow_nan=False)
    lines = [
        json.dumps(record, allow_nan=False)
        for results in (model, *baselines.values())
        for record in results.outcome_records()
    ]
    atomic_write(outcomes_path, "\n".join(lines) + "\n")
    atomic_write(json_path, text + "\n")
    markdown = markdown_report(document)
    atomic_write(markdown_path, markdown)
    plot_ranking(document, plot_path)
    return {
        "json": json_path,
        "outcomes": outcomes_path,
        "markdown": markdown_path,
        "plot": plot_path,
    }


def _format(value: float | None, stderr: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if stderr is None else f"{value:.4f} ± {stderr:.4f}"


def _number(value: float | None, missing: float = float("nan")) -> float:
    return missing if value is None else value


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
