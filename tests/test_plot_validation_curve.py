"""benchmarks/plot_validation_curve.py: a run's validation curves read back from a
hand-written trainer_state.json (as the Trainer writes it), and the PNG drawn from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def plot():
    return load_benchmark("plot_validation_curve")


HISTORY = [
    {"step": 20, "loss": 5.1, "learning_rate": 0.002},  # a training log line: no eval_
    {"step": 500, "eval_loss": 3.72, "eval_hr@10": 0.08, "eval_ndcg@10": 0.04},
    {"step": 1000, "eval_loss": 3.60, "eval_hr@10": 0.10, "eval_ndcg@10": 0.05},
    {"step": 1500, "eval_loss": 3.75, "eval_hr@10": 0.14, "eval_ndcg@10": 0.07,
     "eval_all_items_hr@10": 0.14},
]  # fmt: skip


def _run(tmp_path: Path, steps: tuple[int, ...], history: list, best: int | None) -> Path:
    run = tmp_path / "run"
    for step in steps:
        (run / f"checkpoint-{step}").mkdir(parents=True)
    newest = run / f"checkpoint-{max(steps)}" / "trainer_state.json"
    newest.write_text(json.dumps({"log_history": history, "best_global_step": best}))
    # an older checkpoint's state (fewer evaluations) must not be the one read
    (run / f"checkpoint-{min(steps)}" / "trainer_state.json").write_text(
        json.dumps({"log_history": history[:2], "best_global_step": None})
    )
    (run / "checkpoint-final-ish").mkdir()  # not checkpoint-N: ignored
    return run


def test_curves_come_from_the_newest_checkpoints_state(plot, tmp_path):
    run = _run(tmp_path, (500, 1500), HISTORY, best=1500)
    curves = plot.load_curves(run, best_metric="ndcg@10")
    assert curves.source == run / "checkpoint-1500" / "trainer_state.json"
    assert curves.curves == {
        "loss": ((500, 3.72), (1000, 3.60), (1500, 3.75)),
        "hr@10": ((500, 0.08), (1000, 0.10), (1500, 0.14)),
        "ndcg@10": ((500, 0.04), (1000, 0.05), (1500, 0.07)),
    }
    assert curves.best_step == 1500 and curves.best_metric == "ndcg@10"
    variant = plot.load_curves(curves.source, ("all_items_hr@10",))
    assert variant.curves["all_items_hr@10"] == ((1500, 0.14),)
    assert set(variant.curves) == {"loss", "all_items_hr@10"}


def test_main_writes_the_png_and_prints_the_curves(plot, tmp_path, capsys):
    run = _run(tmp_path, (500, 1500), HISTORY, best=1500)
    out = tmp_path / "figs" / "curve.png"
    assert plot.main([str(run), "--best-metric", "ndcg@10", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    printed = capsys.readouterr().out
    assert "loss: 500 3.7200, 1000 3.6000, 1500 3.7500" in printed
    assert "lowest valid loss at step 1000" in printed  # 3.60 < 3.72, 3.75
    assert "best step 1500" in printed
    assert not list(out.parent.glob("*.tmp*"))


def test_bad_runs_are_refused_with_one_line_naming_the_file(plot, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert plot.main([str(empty), "--out", str(tmp_path / "x.png")]) == 2
    assert f"{empty}: neither a trainer_state.json" in capsys.readouterr().err
    run = _run(tmp_path, (20,), [{"step": 20, "loss": 5.1}], best=None)
    assert plot.main([str(run), "--out", str(tmp_path / "x.png")]) == 2
    assert "no evaluation in log_history (train.eval_steps was not set?)" in (
        capsys.readouterr().err
    )
    broken = tmp_path / "trainer_state.json"
    broken.write_text("{oops")
    assert plot.main([str(broken), "--out", str(tmp_path / "x.png")]) == 2
    assert f"{broken}: not a trainer_state.json" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
