#!/usr/bin/env bash
# Train variants of one recipe that differ in a few settings (an ablation), with the same data and
# budget, then measure τ and per-slot acceptance side by side on held-out prompts.
#   DATA=continuations.jsonl HELDOUT=prompts_heldout.jsonl OUT=runs/ablation PARALLEL=4 \
#   RUNS="base:dspark: dense:dspark:num_anchors=160 ce:dspark:loss_ce=1.0,loss_tv=0.0" \
#   bash recipes/train_variants.sh
# RUNS entries are NAME:METHOD:KEY=VALUE,KEY=VALUE (configs/reference/$PRESET-METHOD.toml + overrides);
# EXTRA_SET adds `--set` flags to every run, EXTRA_DRAFTS (NAME=DIR ...) more drafters to the measurement.
# The slot-1 ablation of docs/benchmarks/quality.md is the default RUNS.
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/_jobs.sh
PY=${PYTHON:-python3}; OUT=${OUT:-runs/variants}; TARGET=${TARGET:-src/dspark/assets/tiny-target}; PRESET=${PRESET:-tiny}
RUNS=${RUNS:-"anchors160:dspark:num_anchors=160 ce-only:dspark:loss_ce=1.0,loss_tv=0.0 no-conf:dspark:loss_conf=0.0 \
steps3x:dspark:epochs=9 dflash-anchors160:dflash:num_anchors=160"}
mkdir -p "$OUT"
DRAFTS=()
for spec in $RUNS; do
  IFS=: read -r name m sets <<<"$spec"
  ARGS=(); IFS=, read -ra kvs <<<"$sets"; for kv in "${kvs[@]}"; do [ -n "$kv" ] && ARGS+=(--set "$kv"); done
  job "$OUT/$name.log" $PY -m dspark train --config configs/reference/$PRESET-$m.toml --set target="$TARGET" \
      --set data="[\"$DATA\"]" --set output_dir="$OUT/$name" --set tensorboard=false "${ARGS[@]}" ${EXTRA_SET:-}
  DRAFTS+=("$name=$OUT/$name/final")
done
jobs_wait || echo "some runs failed: measuring the others"
KEEP=(); for d in "${DRAFTS[@]}"; do [ -d "${d#*=}" ] && KEEP+=("$d"); done
for d in ${EXTRA_DRAFTS:-}; do KEEP+=("$d"); done
$PY scripts/bench_tau.py --target "$TARGET" --prompts "$HELDOUT" --drafts "${KEEP[@]}" --temperature 1.0 0.0 \
    --max-prompts ${BENCH_PROMPTS:-256} --max-new-tokens ${BENCH_TOKENS:-128}
