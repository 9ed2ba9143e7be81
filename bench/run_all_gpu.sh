#!/usr/bin/env bash
# Everything a GPU session runs, in ONE call of about 9 minutes: the test suite on the real CUDA kernels, the
# pytest-benchmark suite, the decode / scoring / select / append / end-to-end benchmarks (JSON into bench/results/),
# the plots drawn from that JSON and the issue's targets read from it. Every step has a time limit and the whole run
# a budget (RAGGEDKV_BUDGET_S, default 560 s), so a slow step cannot starve the later ones; a failed step is reported
# and the run goes on; the exit status is 1 if any step failed.
#
#   bash bench/run_all_gpu.sh                                   # results land in bench/results/
#   RAGGEDKV_GIT_SHA=$(git rev-parse HEAD) bash bench/run_all_gpu.sh   # where the tree is a copy without .git
#
# Under the device tool ($OUT set), the new files are also packed after every step into
# $OUT/bench-results.tar.gz (at most 8 files come back from $OUT), with the log beside it; unpack that archive into
# bench/results/ to commit the run. Each step's full output is in the log; the console shows each step's tail.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device: nothing was run or written (this script is for a GPU machine; see bench/README.md)" >&2
  exit 1
fi
BUDGET_S=${RAGGEDKV_BUDGET_S:-560}
RESULTS=bench/results
mkdir -p "$RESULTS"
STAMP=$(date -u +%Y%m%d-%H%M%S)
LOG="$RESULTS/run_all_gpu-$STAMP.log"
MARK=$(mktemp)  # files newer than this one are this run's
failed=()

pack() {
  [ -n "${OUT:-}" ] || return 0
  (cd "$RESULTS" && find . -maxdepth 1 -type f -newer "$MARK" -printf '%f\n' \
    | tar -czf "$OUT/bench-results.tar.gz" -T -)
  cp "$LOG" "$OUT/run_all_gpu.log"
}

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - SECONDS))
  if ((left < 20)); then
    echo "=== $name: skipped, the ${BUDGET_S} s budget is spent" | tee -a "$LOG"
    failed+=("$name (skipped: no time left)")
    return
  fi
  ((limit > left)) && limit=$left
  echo "=== $name (limit ${limit} s, at ${SECONDS} s): $*" | tee -a "$LOG"
  local part
  part=$(mktemp)
  timeout -k 10 "$limit" "$@" >"$part" 2>&1
  local rc=$?
  cat "$part" >>"$LOG"
  tail -n "${TAIL_LINES:-8}" "$part"
  rm -f "$part"
  if ((rc != 0)); then
    failed+=("$name (exit $rc$( ((rc == 124)) && echo ', timed out'))")
    echo "=== $name: FAILED with exit $rc" | tee -a "$LOG"
  fi
  pack
}

{
  sha=${RAGGEDKV_GIT_SHA:-$(git rev-parse HEAD 2>/dev/null || echo "unknown (set RAGGEDKV_GIT_SHA)")}
  echo "# run_all_gpu $STAMP, budget ${BUDGET_S} s, git $sha"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1
} | tee "$LOG"
python3 -c "import raggedkv.kernels.reference, raggedkv.engine" 2>/dev/null \
  || python3 -m pip install -q --no-deps --no-build-isolation -e . >>"$LOG" 2>&1 \
  || { echo "raggedkv is not importable and could not be installed" | tee -a "$LOG"; exit 1; }

FAST=(--warmup-ms 10 --rep-ms 40)
# The kernel resource report's test is a static compile (no GPU involved) that CI already runs: skip it here.
step tests 170 python3 -m pytest -q -p no:cacheprovider tests --ignore tests/test_kernel_report.py
step pytest-benchmark 45 python3 -m pytest -q -p no:cacheprovider bench/ --benchmark-only
step decode 110 python3 -m bench.bench_decode --full "${FAST[@]}"
step decode-cuda-graph 30 python3 -m bench.bench_decode --quick --cuda-graph "${FAST[@]}"
step scoring 45 python3 -m bench.bench_scoring --full "${FAST[@]}"
step select 35 python3 -m bench.bench_select --full "${FAST[@]}"
step append 25 python3 -m bench.bench_append --full "${FAST[@]}"

# End to end gets what is left (less 30 s for the plots): two thirds for the Llama-3-8B sweep, the rest for
# Mistral-7B at 32K; 32K first, as the decode target is stated there. --time-budget-s stops a run from starting
# configs it could not finish within its limit (they are recorded as skipped).
E2E=(--full --providers hf_full snapkv headkv-r2 --kv-size 128 --new-tokens 512)
e2e() {  # e2e NAME LIMIT_S ARGS...
  local name=$1 limit=$2
  shift 2
  if ((limit < 90)); then
    echo "=== $name: skipped, only ${limit} s left" | tee -a "$LOG"
    failed+=("$name (skipped: no time left)")
    return
  fi
  step "$name" "$limit" python3 -m bench.bench_e2e "${E2E[@]}" "$@" --time-budget-s $((limit - 50))
}
e2e e2e-llama3-8b $(((BUDGET_S - SECONDS - 30) * 2 / 3)) --models llama3-8b --prompts 32768 4096 8192 16384
e2e e2e-mistral-7b $((BUDGET_S - SECONDS - 30)) --models mistral-7b --prompts 32768

mapfile -t jsons < <(find "$RESULTS" -maxdepth 1 -name '*.json' -newer "$MARK" | sort)
if ((${#jsons[@]})); then
  step plots 30 python3 -m bench.plot "${jsons[@]}"
  TAIL_LINES=40 step targets 20 python3 -m bench.targets "${jsons[@]}"
fi
pack

echo "=== done in ${SECONDS} s; results: ${jsons[*]:-none}" | tee -a "$LOG"
if ((${#failed[@]})); then
  printf '=== failed: %s\n' "${failed[@]}" | tee -a "$LOG"
  pack
  exit 1
fi
