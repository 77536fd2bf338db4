#!/usr/bin/env bash
# Block-size sweep (paper Fig. 4 left) and the RNN head on a reference target: DSpark (Markov, RNN) and
# DFlash at several γ, same data and step budget, τ measured side by side on held-out prompts.
#   DATA=continuations.jsonl HELDOUT=prompts_heldout.jsonl OUT=runs/sweep RUNS="dspark:4 dflash:4" \
#   bash recipes/gamma_sweep.sh
# RUNS entries are METHOD:γ (configs/reference/$PRESET-METHOD.toml); PARALLEL trains several at once.
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/_jobs.sh
PY=${PYTHON:-python3}; OUT=${OUT:-runs/sweep}; TARGET=${TARGET:-src/dspark/assets/tiny-target}; PRESET=${PRESET:-tiny}
mkdir -p "$OUT"
DRAFTS=()
for spec in ${RUNS:-dspark-rnn:7}; do
  m=${spec%%:*}; g=${spec#*:}
  job "$OUT/$m-g$g.log" $PY -m dspark train --config configs/reference/$PRESET-$m.toml --set target="$TARGET" \
      --set data="[\"$DATA\"]" --set output_dir="$OUT/$m-g$g" --set block_size=$g --set tensorboard=false ${EXTRA_SET:-}
  DRAFTS+=("$m-g$g=$OUT/$m-g$g/final")
done
jobs_wait || echo "some runs failed: measuring the others"
KEEP=(); for d in "${DRAFTS[@]}"; do [ -d "${d#*=}" ] && KEEP+=("$d"); done; DRAFTS=("${KEEP[@]}")
for d in ${EXTRA_DRAFTS:-}; do DRAFTS+=("$d"); done
$PY scripts/bench_tau.py --target "$TARGET" --prompts "$HELDOUT" --drafts "${DRAFTS[@]}" --temperature 1.0 0.0 \
    --max-prompts ${BENCH_PROMPTS:-256} --max-new-tokens ${BENCH_TOKENS:-128}
