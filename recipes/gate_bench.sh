#!/usr/bin/env bash
# The draft gate on one GPU (docs/benchmarks/draft_gate.md): profile the decoder's SPS table for a target
# and drafter, then time all-drafts-verified, dspark+gate and plain decoding side by side at three loads.
#   PROMPTS=.carry/ref/prompts_test1000.jsonl OUT=runs/gate bash recipes/gate_bench.sh
# TARGET / DRAFT default to the embedded pair; ROUND_TOKENS (256) is the served length the profile uses.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}; OUT=${OUT:-runs/gate}; DEVICE=${DEVICE:-cuda}
TARGET=${TARGET:-src/dspark/assets/tiny-target}; DRAFT=${DRAFT:-src/dspark/assets/tiny-dspark}
mkdir -p "$OUT"
$PY -m dspark profile --target "$TARGET" --draft "$DRAFT" --device "$DEVICE" --requests 1,8,32,128,256,500 \
    --widths 1,2,4,8 --context 128 --round-tokens ${ROUND_TOKENS:-256} --out "$OUT/sps.json" | tee "$OUT/profile.txt"
for load in "1000 500" "64 8" "12 1"; do
  set -- $load
  $PY scripts/bench_tau.py --target "$TARGET" --prompts "$PROMPTS" --drafts dspark="$DRAFT" --plain \
      --policies all dspark+gate --sps "$OUT/sps.json" --max-prompts $1 --batch-size $2 --max-new-tokens 256 \
      --temperature 1.0 --device "$DEVICE" | tee "$OUT/bench-b$2.txt"
done
