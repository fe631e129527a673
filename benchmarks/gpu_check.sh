#!/usr/bin/env bash
# One-call GPU check of fusekernels. On a bare CUDA machine (H100 / H200) with this repository
# copied over: installs what it needs from pip (into .venv-gpu, reusing an installed CUDA torch),
# builds the C++ core, runs the CUDA tests and the GPU benchmarks (fusion loss vs the HBM floor,
# torch eager and Liger-Kernel; teacher top-k; the launch-config sweep; FusionTrainer steps with
# the fused LM head on a 135M-class Llama in bf16) and writes one results file. Every step has a
# time limit so that the whole run fits the budget (default 8 minutes).
#
# Usage: benchmarks/gpu_check.sh [--out FILE] [--budget SECONDS] [--quick] [--skip-install]
#                                [--python PYTHON]
# Exit status: 0 all steps passed, 1 a step failed or ran out of time (see the results file),
#              2 bad arguments or unwritable --out, 3 no NVIDIA GPU found.
set -uo pipefail

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'TXT'

Options:
  --out FILE        results file (default: gpu_check_results.txt in the current folder)
  --budget SECONDS  wall-clock budget for the whole run, >= 120 (default: 480)
  --quick           smaller benchmark shapes (N = 4096 rows, V = 32000 only)
  --skip-install    use PYTHON as it is (fusekernels, triton, pytest importable; C++ core built)
  --python PYTHON   interpreter to install into / run with (default: python3)
  -h, --help        this help
TXT
}

die_usage() { echo "gpu_check.sh: $1" >&2; echo "run 'benchmarks/gpu_check.sh --help' for usage" >&2; exit 2; }

OUT="gpu_check_results.txt"; BUDGET=480; QUICK=0; INSTALL=1; PY=python3
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --out) [ $# -ge 2 ] || die_usage "--out needs a file name"; OUT="$2"; shift 2 ;;
    --budget) [ $# -ge 2 ] || die_usage "--budget needs a number of seconds"; BUDGET="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --skip-install) INSTALL=0; shift ;;
    --python) [ $# -ge 2 ] || die_usage "--python needs an interpreter"; PY="$2"; shift 2 ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done
case "$BUDGET" in ''|*[!0-9]*) die_usage "--budget must be a whole number of seconds, got '$BUDGET'" ;; esac
[ "$BUDGET" -ge 120 ] || die_usage "--budget must be at least 120 seconds, got $BUDGET"
OUT_DIR=$(dirname -- "$OUT")
[ -d "$OUT_DIR" ] || die_usage "--out: folder $OUT_DIR does not exist"
PROBE=$(mktemp "$OUT_DIR/.gpu_check.XXXXXX" 2>/dev/null) || die_usage "--out: cannot write in $OUT_DIR"
rm -f "$PROBE"

REPO=$(cd "$(dirname -- "$0")/.." && pwd)
SMI="${NVIDIA_SMI:-nvidia-smi}"
if ! GPUS=$("$SMI" --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null) || [ -z "$GPUS" ]; then
  echo "gpu_check.sh: no NVIDIA GPU found ('$SMI' is missing or lists no device); nothing was run" >&2
  exit 3
fi

START=$(date +%s)
RESULTS=$(mktemp "$OUT_DIR/.gpu_check_results.XXXXXX")
LOG=$(mktemp)
trap 'rm -f "$RESULTS" "$LOG"' EXIT
FAILED=0
{
  echo "# fusekernels GPU check"
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "gpu: $GPUS"
  echo "budget: ${BUDGET}s, quick: $QUICK"
} >> "$RESULTS"

# step NAME MAX_SECONDS COMMAND...: runs within min(MAX_SECONDS, what is left of the budget - 10 s)
step() {
  local name="$1" max="$2"; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) - 10 ))
  local limit=$(( max < left ? max : left ))
  echo "== $name" | tee -a "$RESULTS"
  if [ "$limit" -lt 5 ]; then
    echo "status: SKIPPED (budget exhausted)" | tee -a "$RESULTS"; FAILED=1; return
  fi
  local t0; t0=$(date +%s)
  (cd "$REPO" && timeout --kill-after=10 "$limit" "$@") > "$LOG" 2>&1
  local rc=$?
  tail -n 60 "$LOG" >> "$RESULTS"
  if [ $rc -eq 0 ]; then
    echo "status: ok ($(( $(date +%s) - t0 )) s)" | tee -a "$RESULTS"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "status: TIMEOUT after ${limit}s" | tee -a "$RESULTS"; FAILED=1
  else
    echo "status: FAILED (exit $rc)" | tee -a "$RESULTS"; tail -n 15 "$LOG" >&2; FAILED=1
  fi
}

if [ "$INSTALL" -eq 1 ]; then
  # --system-site-packages: a CUDA torch already on the machine is reused, not downloaded again
  step "install (pip: fusekernels[gpu], editable, builds the C++ core)" 300 sh -c \
    "'$PY' -m venv --system-site-packages .venv-gpu && . .venv-gpu/bin/activate && \
     python -m pip install -q --upgrade pip && python -m pip install -q -e '.[gpu]'"
  PY="$REPO/.venv-gpu/bin/python"
fi
step "environment" 60 "$PY" -c "import torch, triton, fusekernels, fusekernels._C; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); \
print('device', torch.cuda.get_device_name(), 'capability', torch.cuda.get_device_capability()); \
assert torch.cuda.is_available()"

export HF_HUB_OFFLINE=1
if [ "$QUICK" -eq 1 ]; then export FK_BENCH_ROWS=4096 FK_BENCH_VOCABS=32000; fi
step "CUDA tests (compiled kernels vs references, dispatch, sm_90 AOT)" 150 \
  "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_kernels_cuda.py tests/loss/test_loss_dispatch.py \
  tests/kernels/test_compile_sm90.py
step "GPU benchmarks (fusion loss vs HBM floor, torch eager, Liger-Kernel; launch sweep; teacher top-k)" 180 \
  "$PY" -m pytest -q -s -p no:cacheprovider benchmarks/bench_fusion_loss_gpu.py
step "FusionTrainer steps, 135M-class Llama, bf16" 120 "$PY" benchmarks/gpu_trainer_step.py

echo "total: $(( $(date +%s) - START )) s, $([ $FAILED -eq 0 ] && echo 'all steps ok' || echo 'some steps FAILED')" \
  | tee -a "$RESULTS"
mv -f "$RESULTS" "$OUT"
trap 'rm -f "$LOG"' EXIT
echo "results written to $OUT"
exit $FAILED
