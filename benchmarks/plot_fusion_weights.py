"""Plot how the LM + SASRec fusion weight was chosen: valid NDCG@k by weight, per run.

``scripts/evaluate.py`` chooses the fusion weight w on the valid split and records the
valid metric of every grid weight in ``results.json`` (``rows.fusion.valid_ndcg``). This
script draws those curves, one line per results file and ranking variant, with the chosen
weight marked, so runs (checkpoints, recipes) can be compared at a glance. w = 0 is the
model alone, w = 1 SASRec alone (in the guided search)::

    python benchmarks/plot_fusion_weights.py runs/a/eval/results.json runs/b/eval/results.json \\
        --labels "demo recipe" "next-item recipe" --out fusion_weights.png

Nothing is recomputed: the figures are the ones the evaluation chose with.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from recsysllm.files import atomic_write


@dataclass(frozen=True)
class FusionCurve:
    """One ranking variant's valid curve from one results file."""

    label: str
    variant: str  # "all_items" | "candidates"
    points: tuple[tuple[float, float], ...]  # (weight, valid metric), by weight
    chosen: float
    metric: str
    users: int | None


def load_curves(path: str | Path, label: str | None = None) -> list[FusionCurve]:
    """The fusion row's valid curves of one ``results.json``, one per variant that had
    valid examples (a variant without any records a reason string instead of a curve).

    Raises:
        ValueError: the file has no fusion row (evaluated with ``--no-fusion`` or
            ``--no-sasrec``), no variant with a curve, or a curve without its chosen
            weight, naming the file.
    """
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a results.json ({error})") from error
    fusion = results.get("rows", {}).get("fusion")
    if not isinstance(fusion, dict) or "valid_ndcg" not in fusion:
        raise ValueError(
            f"{path}: no fusion row with valid_ndcg (evaluated with --no-fusion or --no-sasrec?)"
        )
    label = label or str(path.parent)
    users = fusion.get("chosen_on", {}).get("users")
    curves = []
    for variant, grid in sorted(fusion["valid_ndcg"].items()):
        if not isinstance(grid, dict):  # "no valid examples of this variant: ..."
            continue
        chosen = fusion.get("weights", {}).get(variant)
        if chosen is None:
            raise ValueError(f"{path}: rows.fusion.weights has no chosen weight for {variant!r}")
        points = tuple(sorted((float(weight), float(score)) for weight, score in grid.items()))
        curves.append(
            FusionCurve(label, variant, points, float(chosen),
                        fusion.get("metric", "NDCG@10"), users)
        )  # fmt: skip
    if not curves:
        raise ValueError(f"{path}: the fusion row has no valid curve for any variant")
    return curves


def plot_curves(curves: list[FusionCurve], path: str | Path) -> None:
    """One axis per variant; a line per results file, its chosen weight circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = sorted({c.variant for c in curves})
    figure, axes = plt.subplots(1, len(variants), figsize=(6 * len(variants), 4.5), squeeze=False)
    for axis, variant in zip(axes[0], variants, strict=True):
        for curve in (c for c in curves if c.variant == variant):
            weights = [w for w, _ in curve.points]
            scores = [s for _, s in curve.points]
            users = f", {curve.users} valid users" if curve.users else ""
            (line,) = axis.plot(weights, scores, marker=".", label=f"{curve.label}{users}")
            best = dict(curve.points)[curve.chosen]
            axis.plot([curve.chosen], [best], "o", markersize=11, fillstyle="none",
                      color=line.get_color())  # fmt: skip
            axis.annotate(f"w {curve.chosen:g}", (curve.chosen, best), xytext=(4, 6),
                          textcoords="offset points", fontsize=8)  # fmt: skip
        axis.set_xlabel("fusion weight w (0: the model alone, 1: SASRec alone)")
        axis.set_ylabel(f"valid {curves[0].metric}")
        axis.set_title(f"{variant}: weight chosen on valid (circled)", fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results.json files of scripts/evaluate.py")
    parser.add_argument(
        "--labels", nargs="+", help="one label per results file (default: its folder)"
    )
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.results):
        parser.error(f"--labels: {len(args.labels)} labels for {len(args.results)} results files")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    labels = args.labels or [None] * len(args.results)
    try:
        curves = [c for path, label in zip(args.results, labels, strict=True)
                  for c in load_curves(path, label)]  # fmt: skip
    except (OSError, ValueError) as error:
        print(f"plot_fusion_weights: {error}", file=sys.stderr)
        return 2
    plot_curves(curves, args.out)
    for curve in curves:
        print(f"{curve.label} {curve.variant}: chosen w {curve.chosen:g}, "
              + ", ".join(f"{w:g} {s:.4f}" for w, s in curve.points))  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
