"""benchmarks/gpu_step.sh, the step helper the device scripts (gpu_check.sh, gpu_quality.sh)
share: budget capping, skipping, exit statuses and the log, run in bash."""

from __future__ import annotations

import subprocess
from pathlib import Path

HELPER = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_step.sh"


def run_steps(tmp_path: Path, budget: int, body: str, min_left: str = "") -> tuple[str, str]:
    """Runs ``body`` after sourcing the helper; returns (stdout, the log's text)."""
    log = tmp_path / "log.txt"
    script = f"source {HELPER}\nBUDGET={budget}\nSTARTED=$SECONDS\nLOG={log}\n{min_left}\n{body}\n"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return done.stdout, log.read_text() if log.exists() else ""


def test_a_step_runs_logs_and_returns_the_status(tmp_path):
    out, log = run_steps(
        tmp_path,
        100,
        'step "ok" 50 echo hello; echo "ok=$?"\n'
        'step "fails" 50 bash -c "echo oops; exit 3"; echo "fails=$?"',
    )
    assert "ok=0" in out and "fails=3" in out
    assert "== ok (limit 50s, 0s elapsed)" in log and "hello" in log  # output goes to the log
    assert "== fails: exit 3 after" in log and "oops" in log


def test_the_limit_is_capped_by_the_budget_and_a_timeout_is_reported(tmp_path):
    out, log = run_steps(
        tmp_path,
        40,
        'step "capped" 600 true; echo "capped=$?"\nstep "slow" 1 sleep 20; echo "slow=$?"',
    )
    assert "== capped (limit 40s" in log and "capped=0" in out  # 600 s capped to the 40 left
    assert "slow=124" in out and "== slow: exit 124 after" in log  # timeout's status


def test_a_step_is_skipped_when_too_little_budget_is_left(tmp_path):
    out, log = run_steps(tmp_path, 5, 'step "late" 50 echo ran; echo "late=$?"')
    assert "late=1" in out and "ran" not in log
    assert "== late: skipped, 5s of the budget left" in log
    # gpu_check.sh skips below 30 s left (STEP_MIN_LEFT), gpu_quality.sh below 10 s.
    out, log = run_steps(tmp_path, 20, 'step "x" 50 echo ran; echo "x=$?"', "STEP_MIN_LEFT=30")
    assert "x=1" in out and "skipped, 20s" in log
