#!/usr/bin/env bash
# Everything a GPU session runs, in ONE call well inside 9 minutes: the CUDA-graph decode tests, the rest of the
# test suite on the real CUDA kernels, the end-to-end serving benchmark at 32K prompt tokens (first: the issue's
# targets are stated there), the decode / scoring / select / append kernel benchmarks (JSON into bench/results/), the
# end-to-end 16K and 8K rows if time is left, the plots drawn from that JSON and the issue's targets read from it.
# Every step has a time limit and the whole run a budget (RAGGEDKV_BUDGET_S, default 500 s), so a slow step cannot
# starve the later ones; a failed step is reported and the run goes on; the exit status is 1 if any step failed.
# The pytest-benchmark suite is not part of it (`python -m pytest bench/ --benchmark-only`, bench/README.md).
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
BUDGET_S=${RAGGEDKV_BUDGET_S:-500}
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
# End to end at serving scale (bench/README.md): Llama-3-8B shape, batches 1, 8, 32 and the largest that fits,
# hf_static / hf_dynamic against snapkv, headkv-r2, ada-snapkv at kv_size 128 and 512, CUDA graph and eager.
# --time-budget-s stops a run from starting rows it could not finish within its limit (recorded as skipped).
E2E=(--quick --new-tokens 32 --max-batch 1024)
e2e() {  # e2e NAME LIMIT_S ARGS...
  local name=$1 limit=$2
  shift 2
  if ((limit < 90)); then
    echo "=== $name: skipped, only ${limit} s left" | tee -a "$LOG"
    failed+=("$name (skipped: no time left)")
    return
  fi
  step "$name" "$limit" python3 -m bench.bench_e2e "${E2E[@]}" "$@" --time-budget-s $((limit - 45))
}

# The CUDA-graph tests first (graph == eager tokens, seeded sampling under replay, replay across generations), then
# the rest of the suite; the kernel resource report's test is a static compile (no GPU involved) that CI already runs.
GRAPH_TESTS=(tests/test_cuda_graph.py tests/test_runner_step.py)
step cuda-graph-tests 50 python3 -m pytest -q -p no:cacheprovider "${GRAPH_TESTS[@]}"
step tests 110 python3 -m pytest -q -p no:cacheprovider tests --ignore tests/test_kernel_report.py \
  "${GRAPH_TESTS[@]/#/--ignore=}"
e2e e2e-32k 170 --prompts 32768
step decode 50 python3 -m bench.bench_decode --full "${FAST[@]}"
step decode-cuda-graph 15 python3 -m bench.bench_decode --quick --cuda-graph "${FAST[@]}"
step scoring 25 python3 -m bench.bench_scoring --full "${FAST[@]}"
step select 15 python3 -m bench.bench_select --full "${FAST[@]}"
step append 15 python3 -m bench.bench_append --full "${FAST[@]}"
left=$((BUDGET_S - SECONDS - 25))  # 16K and 8K only with time to spare: not a failure when there is none
if ((left >= 90)); then
  e2e e2e-16k-8k "$left" --prompts 16384 8192
else
  echo "=== e2e-16k-8k: not run, ${left} s left (in a slot of its own: python3 -m bench.bench_e2e ${E2E[*]}" \
    "--prompts 16384 8192)" | tee -a "$LOG"
fi

mapfile -t jsons < <(find "$RESULTS" -maxdepth 1 -name '*.json' -newer "$MARK" | sort)
if ((${#jsons[@]})); then
  step plots 15 python3 -m bench.plot "${jsons[@]}"
  TAIL_LINES=40 step targets 10 python3 -m bench.targets "${jsons[@]}"
fi
pack

echo "=== done in ${SECONDS} s; results: ${jsons[*]:-none}" | tee -a "$LOG"
if ((${#failed[@]})); then
  printf '=== failed: %s\n' "${failed[@]}" | tee -a "$LOG"
  pack
  exit 1
fi
