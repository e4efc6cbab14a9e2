"""Plot a training run's validation curves: ranking metrics and loss by step.

With ``train.eval_steps`` the Trainer logs, at every evaluation, the validation loss and
the valid ranking metrics ``eval_hr@k`` / ``eval_ndcg@k`` (``train.eval_ranking_users``);
``trainer_state.json`` of each checkpoint keeps them all (``log_history``), with the best
step when ``train.load_best_model_at_end`` chose one. This script draws them: ranking
metrics on the left axis, the loss on the right, the chosen checkpoint and the step of the
lowest loss marked::

    python benchmarks/plot_validation_curve.py runs/ml100k_next_item --out curve.png

RUN is a training output directory (its newest ``checkpoint-N`` is read) or a
``trainer_state.json``. Nothing is recomputed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from recsysllm.files import atomic_write

STATE_FILE = "trainer_state.json"
DEFAULT_METRICS = ("hr@10", "ndcg@10")


@dataclass(frozen=True)
class ValidationCurves:
    """The evaluations of one run: ``metric -> ((step, value), ...)`` by step."""

    source: Path
    curves: dict[str, tuple[tuple[int, float], ...]]
    best_step: int | None
    best_metric: str | None

    @property
    def lowest_loss_step(self) -> int | None:
        """The step of the lowest validation loss (None: no loss logged)."""
        points = self.curves.get("loss")
        return min(points, key=lambda point: point[1])[0] if points else None


def state_path(run: str | Path) -> Path:
    """``trainer_state.json`` of a run: the file itself, or the newest checkpoint's."""
    from transformers.trainer_utils import get_last_checkpoint

    run = Path(run)
    if run.is_file():
        return run
    newest = get_last_checkpoint(str(run)) if run.is_dir() else None
    if newest is None:
        raise ValueError(f"{run}: neither a trainer_state.json nor a run with checkpoint-N")
    return Path(newest) / STATE_FILE


def load_curves(
    run: str | Path, metrics: tuple[str, ...] = DEFAULT_METRICS, best_metric: str | None = None
) -> ValidationCurves:
    """The run's ``eval_loss`` and ``eval_<metric>`` curves (metrics it never logged are
    left out; none at all is an error naming the file).

    Args:
        run: a run directory or a ``trainer_state.json``.
        metrics: ranking metrics to read (``hr@10``, ``all_items_ndcg@10``, ...).
        best_metric: the metric the best step was chosen by, for the legend (the run's
            config says; None: unnamed).
    """
    path = state_path(run)
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a trainer_state.json ({error})") from error
    history = state.get("log_history")
    if not isinstance(history, list):
        raise ValueError(f"{path}: no log_history (not a trainer_state.json?)")
    curves: dict[str, list[tuple[int, float]]] = {}
    for entry in history:
        for name in ("loss", *metrics):
            key = f"eval_{name}"
            if key in entry:
                curves.setdefault(name, []).append((int(entry["step"]), float(entry[key])))
    if not curves:
        raise ValueError(f"{path}: no evaluation in log_history (train.eval_steps was not set?)")
    return ValidationCurves(
        source=path,
        curves={name: tuple(sorted(points)) for name, points in curves.items()},
        best_step=state.get("best_global_step") or None,
        best_metric=best_metric,
    )


def plot(curves: ValidationCurves, path: str | Path, title: str | None = None) -> None:
    """Ranking metrics (left axis) and loss (right axis) by step; the best step marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 5.5))
    lines = []
    for name, points in curves.curves.items():
        if name == "loss":
            continue
        lines += axis.plot([s for s, _ in points], [v for _, v in points], marker=".",
                           label=f"valid {name}")  # fmt: skip
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("valid ranking metric (higher is better)")
    axis.grid(alpha=0.3)
    if "loss" in curves.curves:
        points = curves.curves["loss"]
        right = axis.twinx()
        steps, values = zip(*points, strict=True)
        lines += right.plot(steps, values, color="grey", linestyle="--", marker="x",
                            label="valid loss (right axis)")  # fmt: skip
        right.set_ylabel("valid loss (lower is better)")
        lowest = curves.lowest_loss_step
        lines.append(axis.axvline(lowest, color="grey", linewidth=1, linestyle=":",
                                  label=f"lowest valid loss: step {lowest}"))  # fmt: skip
    if curves.best_step is not None:
        by = f" by {curves.best_metric}" if curves.best_metric else ""
        label = f"chosen checkpoint{by}: step {curves.best_step}"
        lines.append(axis.axvline(curves.best_step, color="black", linewidth=1, label=label))
    # below the axes: the curves fill the whole plot area
    figure.legend(handles=lines, fontsize=8, loc="lower center", ncol=2, frameon=False)
    axis.set_title(title or str(curves.source.parent), fontsize=10)
    figure.tight_layout(rect=(0, 0.035 * ((len(lines) + 1) // 2) + 0.01, 1, 1))
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="training output directory or trainer_state.json")
    parser.add_argument(
        "--metrics", nargs="+", default=list(DEFAULT_METRICS),
        help=f"ranking metrics to draw (default: {' '.join(DEFAULT_METRICS)})",
    )  # fmt: skip
    parser.add_argument("--best-metric", help="what the best step was chosen by (legend)")
    parser.add_argument("--title", help="figure title (default: the checkpoint's folder)")
    parser.add_argument("--out", required=True, help="PNG to write")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        curves = load_curves(args.run, tuple(args.metrics), args.best_metric)
    except (OSError, ValueError) as error:
        print(f"plot_validation_curve: {error}", file=sys.stderr)
        return 2
    plot(curves, args.out, args.title)
    for name, points in curves.curves.items():
        print(f"{name}: " + ", ".join(f"{s} {v:.4f}" for s, v in points))
    if curves.lowest_loss_step is not None:
        print(f"lowest valid loss at step {curves.lowest_loss_step}")
    if curves.best_step is not None:
        print(f"best step {curves.best_step}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
