#!/usr/bin/env bash
# Does training from the compact cache cost acceptance? Build a standard (DeepSpec v2) and a compact cache
# of the same regenerated data, train the same DSpark drafter from each (same seeds), and measure τ by
# real speculative decoding on held-out prompts, side by side.
#   DATA=continuations.jsonl HELDOUT=prompts_heldout.jsonl OUT=runs/compact SAMPLES=8000 SEEDS="0 1" bash recipes/compact_cache_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}; OUT=${OUT:-runs/compact}; TARGET=${TARGET:-src/dspark/assets/tiny-target}
mkdir -p "$OUT"
sed -n "1,${SAMPLES:-8000}p" "$DATA" > "$OUT/data.jsonl"
for fmt in standard compact; do
  $PY -m dspark cache build --target "$TARGET" --data "$OUT/data.jsonl" --output "$OUT/cache-$fmt" \
      --target-layer-ids 0 2 4 --format $fmt --max-length 256 --batch-size 256 --device ${DEVICE:-cuda}
  $PY -m dspark cache info "$OUT/cache-$fmt" | tail -3
done
DRAFTS=()
for seed in ${SEEDS:-0 1}; do
  for fmt in standard compact; do
    $PY -m dspark train --config configs/reference/tiny-dspark.toml --set target="$TARGET" --set cache="$OUT/cache-$fmt" \
        --set output_dir="$OUT/train-$fmt-s$seed" --set seed=$seed --set tensorboard=false ${EXTRA_SET:-} | tail -1
    DRAFTS+=("$fmt-s$seed=$OUT/train-$fmt-s$seed/final")
  done
done
$PY scripts/bench_tau.py --target "$TARGET" --prompts "$HELDOUT" --drafts "${DRAFTS[@]}" --temperature 1.0 0.0 \
    --max-prompts ${BENCH_PROMPTS:-256} --max-new-tokens ${BENCH_TOKENS:-128}
