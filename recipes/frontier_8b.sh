#!/usr/bin/env bash
# Issue 13's run (b) in one device lease of one H200: the serving frontier of a random-weight Qwen3-8B-shape
# target (bf16) with a 5-layer DSpark drafter and an MTP-1 module of random weights, acceptance drawn from a
# DSpark-like and an MTP-1-like curve (`--synthetic-acceptance dspark/math`, `mtp/math`): benchmark only,
# NOT lossless (every output says so). Nothing travels but the working tree (no carry needed).
#
# On the device (run tool, kind nvidia-h200), back to back (the machine keeps nothing once cold):
#   STAGES=tests    bash recipes/frontier_8b.sh   # ~2 min: the engine's -m gpu tests (graphs == eager, kernels)
#   STAGES=frontier bash recipes/frontier_8b.sh   # <= 9.5 min: the grid below, table + JSON + PNG + simulator
# The whole default grid takes ~11 min on an H200 (2026-12-02: cut in the last policy): split it in two calls,
#   STAGES=frontier POLICIES=none,mtp1,fixed:3,fixed:7 RESULTS=$OUT bash recipes/frontier_8b.sh
#   STAGES=frontier POLICIES=dspark-async,dspark-async+gate RESULTS=$OUT bash recipes/frontier_8b.sh
# and join them here: copy each call's frontier8b.json to DIR/part-1.json, part-2.json, then
#   python recipes/_frontier.py merge --parts DIR --policies none,mtp1,fixed:3,fixed:7,dspark-async,dspark-async+gate \
#       --json DIR/frontier8b.json --plot DIR/frontier8b.png
# Each writes to $OUT (RESULTS elsewhere): gpu_tests.log; frontier8b.log, frontier8b.json, frontier8b.png,
# sim8b.tar.xz (each policy's SPS table, cost terms and acceptance trace for `dspark simulate`), gpu_clocks.csv
# (nvidia-smi every second: SM / memory clocks, power, temperature, throttle reasons).
#
# The mixed-step attention split (decode rows and prefill chunks in two launches) on vs off, same lease:
#   STAGES=frontier POLICIES=none,dspark-async CONCURRENCY=64,256 bash recipes/frontier_8b.sh            # split
#   DSPARK_SPLIT_MIXED=0 STAGES=frontier POLICIES=none,dspark-async CONCURRENCY=64,256 bash recipes/frontier_8b.sh
# Does an engine that profiled its own SPS table at start serve slower (serving.md, session 14)? One call, ~4 min:
#   STAGES=profile_ab bash recipes/frontier_8b.sh   # gate + fixed:7 at C = 1, 4: table profiled apart, then in-engine
# (writes profile_apart.{log,json}, profile_in_engine.{log,json}; no simulator).
#   STAGES=gate_ab SPS=.carry/sps/8b.sps.json bash recipes/frontier_8b.sh   # gate vs fixed:7, ABBA x REPEATS (3)
# (writes gate_ab.{log,json}; SPS optional: without it the table is profiled on a throwaway engine first).
# Environment: POLICIES (none,mtp1,fixed:3,fixed:7,dspark-async,dspark-async+gate), CONCURRENCY
# (1,4,16,64,256), MAX_TOKENS (256), PROMPT_LEN (192: random ids, the random target has no tokenizer),
# TEMPERATURE (1), SHAPE (qwen3-8b), LAYERS (5), FRONTIER_TIMEOUT (560 s), EXTRA (more bench_frontier flags).
set -eEuo pipefail
trap 'echo "[$(date +%T)] FAILED (rc=$?): $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
STAGES=${STAGES:-"tests frontier"}
RES=${RESULTS:-${OUT:-runs/frontier8b/results}}
mkdir -p "$RES" runs
stage() { [[ " $STAGES " == *" $1 "* ]]; }
stamp() { echo "[$(date +%T)] $*"; }

if stage tests; then
  stamp "gpu tests"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$RES/gpu_tests.log" 2>&1 || true
  timeout "${TESTS_TIMEOUT:-240}" $PY -m pytest -m gpu -q -x -p no:cacheprovider tests/test_engine_gpu.py \
    tests/test_sampling_triton.py tests/test_graphed_step.py tests/test_kernels_attention.py >> "$RES/gpu_tests.log" 2>&1 \
    || echo "gpu tests: rc=$?" >> "$RES/gpu_tests.log"
  tail -25 "$RES/gpu_tests.log"
fi

if stage profile_ab; then
  for mode in apart in_engine; do
    flag=""; [ "$mode" = in_engine ] && flag=--profile-in-engine
    stamp "profile A/B: the SPS table profiled $mode"
    # a fresh cache each way, so both profile (the in-engine one inside the gate's own engine)
    DSPARK_CACHE=$PWD/runs/cache_$mode timeout "${AB_TIMEOUT:-270}" $PY scripts/bench_frontier.py \
      --target "random:${SHAPE:-qwen3-8b}" --drafter "random:${LAYERS:-5}" --synthetic-acceptance dspark/math \
      --policies "${AB_POLICIES:-dspark-async+gate,fixed:7}" --concurrency "${AB_CONCURRENCY:-1,4}" \
      --max-tokens "${MAX_TOKENS:-256}" --prompt-len "${PROMPT_LEN:-192}" --temperature "${TEMPERATURE:-1}" \
      --dtype bfloat16 $flag --json-out "$RES/profile_$mode.json" > "$RES/profile_$mode.log" 2>&1 \
      || echo "bench_frontier: rc=$?" >> "$RES/profile_$mode.log"
    grep -E " c=[0-9]+:" "$RES/profile_$mode.log" || tail -5 "$RES/profile_$mode.log"
  done
fi

if stage gate_ab; then
  # the gate against its closest rival in ONE process, ABBA repeats (--repeats), each point its median repeat:
  # session 15 found 2-3% between two runs of one policy, the size of the 0.97x margin being tested
  stamp "gate A/B: ${AB_POLICIES:-dspark-async+gate,fixed:7} x ${REPEATS:-3} repeats at C = ${AB_CONCURRENCY:-1,4,16}"
  sps=""; [ -n "${SPS:-}" ] && sps="--sps $SPS"
  timeout "${AB_TIMEOUT:-540}" $PY scripts/bench_frontier.py --target "random:${SHAPE:-qwen3-8b}" \
    --drafter "random:${LAYERS:-5}" --synthetic-acceptance dspark/math --policies "${AB_POLICIES:-dspark-async+gate,fixed:7}" \
    --concurrency "${AB_CONCURRENCY:-1,4,16}" --repeats "${REPEATS:-3}" --max-tokens "${MAX_TOKENS:-256}" \
    --prompt-len "${PROMPT_LEN:-192}" --temperature "${TEMPERATURE:-1}" --dtype bfloat16 $sps \
    --json-out "$RES/gate_ab.json" > "$RES/gate_ab.log" 2>&1 || echo "bench_frontier: rc=$?" >> "$RES/gate_ab.log"
  grep -E " c=[0-9]+:" "$RES/gate_ab.log" || tail -5 "$RES/gate_ab.log"
fi

if stage frontier; then
  stamp "frontier: random:${SHAPE:-qwen3-8b} + random:${LAYERS:-5}"
  rm -rf runs/sim8b
  rc=0
  # the GPU's clocks, power and throttle reasons every second (a point's speed moved 8.6% within one lease in
  # session 13: a power or thermal cap on the compute-bound C = 256 steps would show here)
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
    --format=csv -l 1 > "$RES/gpu_clocks.csv" 2>/dev/null & smi=$!
  timeout "${FRONTIER_TIMEOUT:-560}" $PY scripts/bench_frontier.py --target "random:${SHAPE:-qwen3-8b}" \
    --drafter "random:${LAYERS:-5}" --mtp-drafter random \
    --synthetic-acceptance dspark/math --mtp-synthetic-acceptance mtp/math \
    --policies "${POLICIES:-none,mtp1,fixed:3,fixed:7,dspark-async,dspark-async+gate}" \
    --concurrency "${CONCURRENCY:-1,4,16,64,256}" --max-tokens "${MAX_TOKENS:-256}" \
    --prompt-len "${PROMPT_LEN:-192}" --temperature "${TEMPERATURE:-1}" --dtype bfloat16 \
    --plot "$RES/frontier8b.png" --json-out "$RES/frontier8b.json" --simulate --sim-dir runs/sim8b ${EXTRA:-} \
    > "$RES/frontier8b.log" 2>&1 || rc=$?
  kill "$smi" 2>/dev/null || true
  [ -d runs/sim8b ] && tar cJf "$RES/sim8b.tar.xz" -C runs sim8b
  grep -v '^{' "$RES/frontier8b.log" | tail -60
  stamp "frontier rc=$rc"
fi
