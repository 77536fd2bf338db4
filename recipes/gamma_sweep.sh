#!/usr/bin/env bash
# Block-size sweep (paper Fig. 4 left) and the RNN head on a reference target: DSpark (Markov, RNN) and
# DFlash at several γ, same data and step budget, τ measured side by side on held-out prompts.
#   DATA=continuations.jsonl HELDOUT=prompts_heldout.jsonl OUT=runs/sweep RUNS="dspark:4 dflash:4" \
#   bash recipes/gamma_sweep.sh
# RUNS entries are METHOD:γ (configs/reference/$PRESET-METHOD.toml); each becomes the variant
# METHOD-gγ of recipes/train_variants.sh (PARALLEL, EXTRA_SET, EXTRA_DRAFTS as there).
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANTS=()
for spec in ${RUNS:-dspark-rnn:7}; do
  m=${spec%%:*}; g=${spec#*:}
  VARIANTS+=("$m-g$g:$m:block_size=$g")
done
OUT=${OUT:-runs/sweep} RUNS="${VARIANTS[*]}" exec bash recipes/train_variants.sh
