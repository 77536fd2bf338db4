#!/usr/bin/env bash
# Issue 11's runner checks in ONE device call of one H200 (~5-6 min, nothing carried): the -m gpu tests of the
# kernels and graphs (the fused drafter path included), the target step and the DSpark drafter's proposal fused
# against plain side by side (scripts/bench_engine.py --drafter-path both), and each policy's step wall time and
# host phases with real graph replays (scripts/bench_host.py --device cuda: why `dspark-async` steps cost more
# than `fixed:7`'s at the same verify length, docs/benchmarks/serving.md run (a)).
#
#   bash recipes/runner_check.sh                 # on the device (run tool, kind nvidia-h200, timeout_s 600)
#   STAGES="engine host" bash recipes/runner_check.sh
#   STAGES="tests skinny" bash recipes/runner_check.sh   # the skinny GEMM: per-shape table, engine step on vs off
#   STAGES="tests pdl" bash recipes/runner_check.sh      # programmatic dependent launch on vs off (engine step)
#   STAGES="markov" bash recipes/runner_check.sh         # the drafter's fused Markov slot loop on vs off
#   STAGES="markovcfg" bash recipes/runner_check.sh      # its launch configs (bench_markov), the fastest in the drafter
#   STAGES="mixed" bash recipes/runner_check.sh          # a decode + prefill-chunk step: attention split vs one launch
#   STAGES="serpentine" bash recipes/runner_check.sh     # the Markov loop's W2 order, odd slots reversed vs not
#
# Writes to $OUT (RESULTS elsewhere), within the run tool's 8 files: gpu_tests.log, bench_engine.log (+ its
# JSON / SPS plot under bench_engine/ in results.tgz), bench_host.log; results.tgz holds all of it.
# The skinny stage writes skinny.log (scripts/bench_skinny.py) and engine_skinny{1,0}.log (bench_engine with
# DSPARK_SKINNY_GEMM=1 / 0: decode and verify-8 at batch 1 and 8 on both shapes, the fused drafter at batch 1).
# The pdl stage writes engine_pdl{1,0}.log (bench_engine with DSPARK_PDL=1 / 0, PDL_MODELS (qwen3-4b)).
# The markov stage writes markov_tests.log (the -m gpu tests of the fused loop, the padded planner) and
# engine_markov{1,0}.log (bench_engine with DSPARK_FUSED_MARKOV=1 / 0: 4B decode at batch 1 and 8, the drafter
# at MARKOV_BATCHES (1,8,32)). The markovcfg stage writes bench_markov.log (scripts/bench_markov.py: every launch
# config of the fused loop and the PyTorch loop, graph-timed) and engine_markovcfg.log (bench_engine's drafter
# with the fastest config, DSPARK_MARKOV_CONFIG). The mixed stage writes mixed_tests.log (the attention -m gpu
# tests) and bench_mixed.log (scripts/bench_mixed.py: MIXED_MODEL (qwen3-8b), rows MIXED_ROWS (16,64,254)).
# The serpentine stage writes serpentine{1,0}.log (bench_markov, three configs) and engine_serpentine{1,0}.log
# (bench_engine: 4B decode and the fused drafter at 1 and 8 rows) with DSPARK_MARKOV_SERPENTINE=1 / 0, then
# rowvec.log and engine_rowvec.log: the same at one row with DSPARK_MARKOV_ROWVEC=1 (no tl.dot).
# Environment: STAGES ("tests engine host"), HOST_SHAPE (qwen3-8b), HOST_LAYERS (5), HOST_CONC (4,64),
# HOST_POLICIES (fixed:7,dspark,dspark-async,dspark-async+gate), TESTS_TIMEOUT (420 s for the tests stage; 260 s timed out in session 14, 200 s for the others), TESTS_PART
# (1 or 2: half of the -m gpu list, one call each; default all, ~11.5 min: too long for one call).
set -eEuo pipefail
trap 'echo "[$(date +%T)] FAILED (rc=$?): $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
STAGES=${STAGES:-"tests engine host"}
RES=${RESULTS:-${OUT:-runs/runner_check}}
mkdir -p "$RES"
stage() { [[ " $STAGES " == *" $1 "* ]]; }
stamp() { echo "[$(date +%T)] $*"; }

if stage tests; then
  stamp "gpu tests"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$RES/gpu_tests.log" 2>&1 || true
  # the whole list takes ~11.5 min on an H200 (session 15), more than one call: TESTS_PART=1 (kernels, graphs,
  # samplers, ~5 min) and TESTS_PART=2 (the engine's graph == eager / transformers tests, ~6 min) in two calls
  part1="tests/test_drafter_fused.py tests/test_kernels_attention.py tests/test_graphed_target.py tests/test_draft_kv.py
    tests/test_sampling_triton.py tests/test_graphed_step.py tests/test_step_inputs.py tests/test_skinny_gemm.py
    tests/test_markov_sampling.py"
  part2="tests/test_engine_gpu.py tests/test_chain_flat_absorb.py"
  case "${TESTS_PART:-all}" in 1) files=$part1 ;; 2) files=$part2 ;; *) files="$part1 $part2" ;; esac
  echo "TESTS_PART=${TESTS_PART:-all}" >> "$RES/gpu_tests.log"
  timeout "${TESTS_TIMEOUT:-420}" $PY -m pytest -m gpu -v -rf --durations=12 -p no:cacheprovider $files \
    >> "$RES/gpu_tests.log" 2>&1 || echo "gpu tests: rc=$?" >> "$RES/gpu_tests.log"
  tail -15 "$RES/gpu_tests.log"
fi
if stage engine; then
  stamp "bench_engine: target step, drafter proposal fused vs plain"
  $PY scripts/bench_engine.py --models qwen3-4b --contexts 1024 --decode-batches 1,8,32 --verify 8 --verify-batches 1,32 \
    --drafter-batches 1,8,32 --drafter-path both --no-diagnostics --out "$RES/bench_engine" > "$RES/bench_engine.log" 2>&1 \
    || echo "bench_engine: rc=$?" >> "$RES/bench_engine.log"
  grep -v '^{' "$RES/bench_engine.log" | tail -30
fi
if stage skinny; then
  stamp "bench_skinny: per-shape GEMMs, tuned choice vs cuBLAS (graph-timed, L2 defeated)"
  $PY scripts/bench_skinny.py --rows "${SKINNY_ROWS:-1,8,32}" > "$RES/skinny.log" 2>&1 || echo "bench_skinny: rc=$?" >> "$RES/skinny.log"
  grep -v '^{' "$RES/skinny.log" | tail -50
  for flag in 1 0; do
    stamp "bench_engine with DSPARK_SKINNY_GEMM=$flag"
    DSPARK_SKINNY_GEMM=$flag $PY scripts/bench_engine.py --models "${SKINNY_MODELS:-qwen3-4b,qwen3-8b}" --contexts 1024 --decode-batches 1,8 \
      --verify 8 --verify-batches 1,8 --drafter-batches 1 --drafter-path fused --out "$RES/engine_skinny$flag" \
      > "$RES/engine_skinny$flag.log" 2>&1 || echo "bench_engine: rc=$?" >> "$RES/engine_skinny$flag.log"
    grep -v '^{' "$RES/engine_skinny$flag.log" | tail -24
  done
fi
if stage pdl; then
  for flag in 1 0; do
    stamp "bench_engine with DSPARK_PDL=$flag (programmatic dependent launch of the Triton kernels)"
    DSPARK_PDL=$flag $PY scripts/bench_engine.py --models "${PDL_MODELS:-qwen3-4b}" --contexts 1024 --decode-batches 1,8,32 \
      --verify 8 --verify-batches 1,32 --drafter-batches 1,32 --drafter-path fused --out "$RES/engine_pdl$flag" \
      > "$RES/engine_pdl$flag.log" 2>&1 || echo "bench_engine: rc=$?" >> "$RES/engine_pdl$flag.log"
    grep -v '^{' "$RES/engine_pdl$flag.log" | tail -24
  done
fi
if stage markov; then
  stamp "gpu tests of the fused Markov loop and the padded planner"
  timeout "${TESTS_TIMEOUT:-200}" $PY -m pytest -m gpu -q -rf -s -p no:cacheprovider tests/test_markov_sampling.py \
    tests/test_engine_gpu.py::test_table_driven_planner_prices_steps_at_the_graph_ladder \
    tests/test_drafter_fused.py::test_gpu_fused_bf16_matches_plain_and_captures > "$RES/markov_tests.log" 2>&1 \
    || echo "markov tests: rc=$?" >> "$RES/markov_tests.log"
  grep -E "passed|failed|error|kernels" "$RES/markov_tests.log" | tail -8
  for flag in 1 0; do
    stamp "bench_engine with DSPARK_FUSED_MARKOV=$flag"
    DSPARK_FUSED_MARKOV=$flag $PY scripts/bench_engine.py --models qwen3-4b --contexts 1024 --decode-batches 1,8 \
      --verify 8 --verify-batches 1 --drafter-batches "${MARKOV_BATCHES:-1,8,32}" --drafter-path fused --no-diagnostics \
      --out "$RES/engine_markov$flag" > "$RES/engine_markov$flag.log" 2>&1 || echo "bench_engine: rc=$?" >> "$RES/engine_markov$flag.log"
    grep -v '^{' "$RES/engine_markov$flag.log" | tail -16
  done
fi
if stage markovcfg; then
  stamp "bench_markov: the fused loop's launch configs against the PyTorch loop"
  timeout "${TESTS_TIMEOUT:-200}" $PY -m pytest -m gpu -q -rf -p no:cacheprovider tests/test_markov_sampling.py \
    > "$RES/markov_tests.log" 2>&1 || echo "markov tests: rc=$?" >> "$RES/markov_tests.log"
  tail -2 "$RES/markov_tests.log"
  $PY scripts/bench_markov.py --rows 1,8 --best-out "$RES/markov_best.txt" > "$RES/bench_markov.log" 2>&1 \
    || echo "bench_markov: rc=$?" >> "$RES/bench_markov.log"
  grep -v '^{' "$RES/bench_markov.log" | tail -26
  best=$(cat "$RES/markov_best.txt" 2>/dev/null || true)
  stamp "bench_engine's drafter with DSPARK_MARKOV_CONFIG=${best:-default}"
  DSPARK_MARKOV_CONFIG=$best $PY scripts/bench_engine.py --models qwen3-4b --contexts 1024 --decode-batches 1,8 \
    --verify 8 --verify-batches 1 --drafter-batches 1,8 --drafter-path fused --no-diagnostics \
    --out "$RES/engine_markovcfg" > "$RES/engine_markovcfg.log" 2>&1 || echo "bench_engine: rc=$?" >> "$RES/engine_markovcfg.log"
  grep -v '^{' "$RES/engine_markovcfg.log" | tail -12
fi
if stage serpentine; then
  for flag in 1 0; do
    stamp "the fused Markov loop with DSPARK_MARKOV_SERPENTINE=$flag (odd slots read W2 last tile first)"
    DSPARK_MARKOV_SERPENTINE=$flag $PY scripts/bench_markov.py --rows 1,8 --configs "256,32,4,2;256,64,4,2;512,32,8,2" \
      > "$RES/serpentine$flag.log" 2>&1 || echo "bench_markov: rc=$?" >> "$RES/serpentine$flag.log"
    grep -v '^{' "$RES/serpentine$flag.log" | tail -8
    DSPARK_MARKOV_SERPENTINE=$flag $PY scripts/bench_engine.py --models qwen3-4b --contexts 1024 --decode-batches 1 \
      --verify 8 --verify-batches 1 --drafter-batches 1,8 --drafter-path fused --no-diagnostics \
      --out "$RES/engine_serpentine$flag" > "$RES/engine_serpentine$flag.log" 2>&1 \
      || echo "bench_engine: rc=$?" >> "$RES/engine_serpentine$flag.log"
    grep -v '^{' "$RES/engine_serpentine$flag.log" | tail -10
  done
  stamp "the one-row Markov loop without tl.dot (DSPARK_MARKOV_ROWVEC=1, serpentine on)"
  DSPARK_MARKOV_ROWVEC=1 $PY scripts/bench_markov.py --rows 1 --configs "256,32,4,2;256,64,4,2;512,32,8,2" \
    > "$RES/rowvec.log" 2>&1 || echo "bench_markov: rc=$?" >> "$RES/rowvec.log"
  grep -v '^{' "$RES/rowvec.log" | tail -6
  DSPARK_MARKOV_ROWVEC=1 $PY scripts/bench_engine.py --models qwen3-4b --contexts 1024 --decode-batches 1 \
    --verify 8 --verify-batches 1 --drafter-batches 1 --drafter-path fused --no-diagnostics \
    --out "$RES/engine_rowvec" > "$RES/engine_rowvec.log" 2>&1 || echo "bench_engine: rc=$?" >> "$RES/engine_rowvec.log"
  grep -v '^{' "$RES/engine_rowvec.log" | tail -8
fi
if stage mixed; then
  stamp "mixed step: decode rows beside a prefill chunk, attention split vs one launch"
  timeout "${TESTS_TIMEOUT:-200}" $PY -m pytest -m gpu -q -rf -p no:cacheprovider tests/test_kernels_attention.py \
    > "$RES/mixed_tests.log" 2>&1 || echo "mixed tests: rc=$?" >> "$RES/mixed_tests.log"
  tail -2 "$RES/mixed_tests.log"
  $PY scripts/bench_mixed.py --model "${MIXED_MODEL:-qwen3-8b}" --rows "${MIXED_ROWS:-16,64,254}" \
    > "$RES/bench_mixed.log" 2>&1 || echo "bench_mixed: rc=$?" >> "$RES/bench_mixed.log"
  grep -v '^{' "$RES/bench_mixed.log" | tail -8
fi
if stage host; then
  stamp "bench_host on the GPU: step wall time and host phases per policy"
  $PY scripts/bench_host.py --device cuda --shape "${HOST_SHAPE:-qwen3-8b}" --drafter-layers "${HOST_LAYERS:-5}" \
    --concurrency "${HOST_CONC:-4,64}" --policies "${HOST_POLICIES:-fixed:7,dspark,dspark-async,dspark-async+gate}" \
    --steps 60 --warmup 20 --prompt-len 192 > "$RES/bench_host.log" 2>&1 || echo "bench_host: rc=$?" >> "$RES/bench_host.log"
  grep -v '^{' "$RES/bench_host.log" | tail -12
fi
if [ -n "${OUT:-}" ] && [ "$RES" != "$OUT" ]; then
  cp "$RES"/*.log "$OUT/" 2>/dev/null || true
fi
if [ -n "${OUT:-}" ]; then tar -czf "$OUT/results.tgz" -C "$RES" . 2>/dev/null || true; fi
stamp "done"
