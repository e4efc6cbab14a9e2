#!/usr/bin/env bash
# Every GPU figure of issue 13 (training and decoding) on one H100/H200, in under 8 minutes, as one table.
#
#   bash benchmarks/gpu_check.sh fetch        # here, with pip: wheels the device image lacks -> .whl/
#   bash benchmarks/gpu_check.sh              # on the GPU machine: writes $OUT (or runs/gpu_check)
#   bash benchmarks/gpu_check.sh --cpu-smoke  # the same sequence with tiny shapes on CPU (a dry run)
#
# On the device machine (device tool): carry .whl and run `bash benchmarks/gpu_check.sh`;
# the wheels go into /tmp/site (transformers >= 5.23 and peft for the model and LoRA,
# liger-kernel for the fused loss). Results: $OUT/training.jsonl (one JSON line per run),
# $OUT/generation.md (the decoding row), $OUT/table.md (the tables) and $OUT/log.txt
# (every step's output, the CUDA equality tests' included). With the device tool: after
# `fetch` here,
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
#
# Runs, in priority order (later ones are skipped, and say so, when the 8-minute budget
# would be exceeded; each run has its own time limit):
#   1. glm-2b, today's path: packing within batches of 32 examples, SDPA, full logits.
#   D. glm-large decoding: trie-constrained top-10 over 12,000 items and 1-of-100 scoring,
#      decoder reference vs static in the same run (users/s, ratio, lists that agree);
#      then 64 users in fp32 for the lists' agreement.
#   2. glm-2b, rows packed across batches (8 rows of 1024), loss full|labelled x SDPA|flex.
#   3. glm-10b, today's path with full activation checkpointing (the RESULTS.md baseline).
#   4. glm-10b, all levers (window, labelled, flex), checkpointing every 1, 2 blocks, none.
#   5. pytest -m gpu tests/test_gpu.py (flex and Liger gradients equal the plain path).
#   6. glm-2b, all levers + torch.compile of each block.
# All LoRA r=8 on the four linear layers, bf16, max length 1024, MFU over 989 TFLOP/s.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1
WHEELS=(transformers==5.24.0 peft==0.21.2 liger-kernel==0.8.5 regex==2026.11.19)

if [[ "${1:-}" == "fetch" ]]; then
    exclude="$(git rev-parse --git-path info/exclude)"
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
    mkdir -p .whl
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}" || exit 1
    ls -l .whl
    exit 0
fi

SMOKE=0
[[ "${1:-}" == "--cpu-smoke" ]] && SMOKE=1
OUT="${OUT:-$REPO/runs/gpu_check}"
mkdir -p "$OUT"
RESULTS="$OUT/training.jsonl"
LOG="$OUT/log.txt"
: >"$RESULTS"
: >"$LOG"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PYTHON="${PYTHON:-python3}"

if [[ $SMOKE == 0 && -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi

if [[ $SMOKE == 1 ]]; then
    BUDGET=900
    COMMON=(--device cpu --max-length 256 --rows 2 --batch 8 --steps 2 --warmup 1 --lora)
    SMALL=tiny
    LARGE=tiny
    LARGE_STEPS=(--steps 2 --warmup 1)
else
    BUDGET=470 # seconds for everything; the table is written whatever happens
    COMMON=(--device cuda --max-length 1024 --rows 8 --batch 32 --steps 10 --warmup 2)
    SMALL=glm-2b
    LARGE=glm-10b
    LARGE_STEPS=(--steps 6 --warmup 2)
fi

{
    echo "gpu_check $(date -u +%FT%TZ) smoke=$SMOKE"
    git log -1 --oneline 2>/dev/null
    command -v nvidia-smi >/dev/null && nvidia-smi -L
    "$PYTHON" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
    "$PYTHON" -c 'import liger_kernel; print("liger-kernel installed")' 2>/dev/null || echo "liger-kernel: not installed (chunked loss)"
} 2>&1 | tee -a "$LOG"

STARTED=$SECONDS
STEP_MIN_LEFT=30
source "$REPO/benchmarks/gpu_step.sh" # step NAME LIMIT COMMAND...
BENCH=("$PYTHON" benchmarks/bench_training.py "${COMMON[@]}" --out "$RESULTS")

step "1 $SMALL today" 90 "${BENCH[@]}" --shapes $SMALL --packing batch --checkpoint-every 0
if [[ $SMOKE == 1 ]]; then
    DECODING=(--device cpu --shape tiny --items 2000 --users 4 --batch 4 --candidates 10)
else
    DECODING=(--device cuda --dtype bf16 --shape glm-large --items 12000 --users 256 --batch 64
        --k 10 --candidates 100)
fi
step "D glm-large decoding" 120 "$PYTHON" benchmarks/bench_generation.py "${DECODING[@]}" \
    --table-out "$OUT/generation.md"
# The same in fp32 for fewer users: whether both decoders' lists agree is then not at the
# mercy of bf16 rounding between near-tied items (random weights give near-uniform logits).
if [[ $SMOKE == 0 ]]; then
    step "D2 glm-large decoding, fp32 lists" 60 "$PYTHON" benchmarks/bench_generation.py \
        "${DECODING[@]}" --dtype fp32 --users 64 --candidates 10 \
        --table-out "$OUT/generation_fp32.md"
fi
step "2 $SMALL levers" 200 "${BENCH[@]}" --shapes $SMALL --packing window --loss full labelled \
    --attention sdpa flex --checkpoint-every 0
step "3 $LARGE today" 90 "${BENCH[@]}" --shapes $LARGE "${LARGE_STEPS[@]}" --packing batch \
    --checkpoint-every 1
step "4 $LARGE levers" 210 "${BENCH[@]}" --shapes $LARGE "${LARGE_STEPS[@]}" --packing window \
    --loss labelled --attention flex --checkpoint-every 1 2 0
if [[ $SMOKE == 0 ]]; then
    step "5 pytest -m gpu" 120 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
fi
step "6 $SMALL levers + compiled blocks" 150 "${BENCH[@]}" --shapes $SMALL --packing window \
    --loss labelled --attention flex --checkpoint-every 0 --compile-blocks

"$PYTHON" benchmarks/bench_training.py --table "$RESULTS" | tee "$OUT/table.md"
for table in "$OUT/generation.md" "$OUT/generation_fp32.md"; do
    if [[ -s "$table" ]]; then
        { echo; echo "Decoding (benchmarks/bench_generation.py):"; cat "$table"; } |
            tee -a "$OUT/table.md"
    fi
done
echo "gpu_check done in $((SECONDS - STARTED))s; results in $OUT" | tee -a "$LOG"
