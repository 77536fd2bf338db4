#!/usr/bin/env bash
# Block-size sweep (paper Fig. 4 left) and the RNN head on a reference target: DSpark (Markov, RNN) and
# DFlash at several γ, same data and step budget, τ measured side by side on held-out prompts.
#   DATA=continuations.jsonl HELDOUT=prompts_heldout.jsonl OUT=runs/sweep GAMMAS="4 12" bash recipes/gamma_sweep.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}; OUT=${OUT:-runs/sweep}; TARGET=${TARGET:-src/dspark/assets/tiny-target}
mkdir -p "$OUT"
DRAFTS=()
for spec in ${RUNS:-dspark-rnn:7}; do
  m=${spec%%:*}; g=${spec#*:}
  $PY -m dspark train --config configs/reference/tiny-$m.toml --set target="$TARGET" --set data="[\"$DATA\"]" \
      --set output_dir="$OUT/$m-g$g" --set block_size=$g --set tensorboard=false ${EXTRA_SET:-}
  DRAFTS+=("$m-g$g=$OUT/$m-g$g/final")
done
for d in ${EXTRA_DRAFTS:-}; do DRAFTS+=("$d"); done
$PY scripts/bench_tau.py --target "$TARGET" --prompts "$HELDOUT" --drafts "${DRAFTS[@]}" --temperature 1.0 0.0 \
    --max-prompts ${BENCH_PROMPTS:-256} --max-new-tokens ${BENCH_TOKENS:-128}
