# Sourced by benchmarks/gpu_check.sh and benchmarks/gpu_quality.sh: one timed, logged step
# of a device run. The caller sets BUDGET (seconds for the whole run), STARTED ($SECONDS at
# its start) and LOG (the log file), and may set STEP_MIN_LEFT (default 10): a step is
# skipped when less of the budget is left.

# step NAME LIMIT COMMAND...: COMMAND under min(LIMIT, budget left), its output appended
# to LOG; returns COMMAND's exit status (1 when skipped) and never aborts the run.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - STARTED)))
    if ((left < ${STEP_MIN_LEFT:-10})); then
        echo "== $name: skipped, ${left}s of the budget left" | tee -a "$LOG"
        return 1
    fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit}s, $((SECONDS - STARTED))s elapsed)" | tee -a "$LOG"
    timeout --signal=INT --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    local status=$?
    echo "== $name: exit $status after $((SECONDS - STARTED))s" | tee -a "$LOG"
    return $status
}
