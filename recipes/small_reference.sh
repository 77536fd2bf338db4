#!/usr/bin/env bash
# The headline benchmark on the `small` reference target, end to end on one GPU (docs/benchmarks/quality.md):
#   1. pretrain the small target (recipes/reference_target.sh small)
#   2. regenerate continuations with it and train DSpark (Markov, RNN), DFlash, Eagle3, MTP-1 side by side
#   3. time 1,000 prompts × 256 new tokens, speculative (DSpark) against plain decoding, one run
#   4. calibrate DSpark (STS) and evaluate all drafters per dataset and domain at T = 1 and T = 0,
#      beside the block-size sweep γ ∈ {4, 8, 12, 16} (DSpark Markov and RNN, DFlash)
#
#   CORPUS=.carry/corpus TOKENIZER=.carry/tokenizer PROMPTS=.carry/ref/prompts_train.jsonl \
#   HELDOUT=.carry/ref/prompts_heldout.jsonl TIMING=.carry/ref/prompts_test1000.jsonl \
#   DATASETS=../shared/datasets RUNS=runs/small bash recipes/small_reference.sh
#
# Environment: TIME_BUDGET (pretraining seconds; the preset's 780 by default), PARALLEL (trainings at
# once, 5), EVAL_PARALLEL (evaluations at once, 4), SWEEP (METHOD:γ list; empty to skip), METHODS
# (drafters to train, all five by default), MAX_PROMPTS (per benchmark set, 100), STAGES (subset of "target drafters timing eval").
# Each stage is skipped when its output exists, so a rerun resumes after the last finished stage.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
R=${RUNS:-runs/small}; TARGET=$R/small-target; DR=$R/drafters
STAGES=${STAGES:-"target drafters timing eval"}
SWEEP=${SWEEP-"dspark:4 dflash:4 dspark:8 dflash:8 dspark:12 dflash:12 dspark:16 dflash:16 dspark-rnn:4 dspark-rnn:16"}
mkdir -p "$R"
stage() { [[ " $STAGES " == *" $1 "* ]]; }
stamp() { echo "[$(date +%T)] $*"; }

if stage target && [ ! -f "$TARGET/config.json" ]; then
  stamp "target"
  RUNS=$R OUT=$TARGET bash recipes/reference_target.sh small
fi
if stage drafters && [ ! -d "$DR/dspark/lean-bf16" ]; then
  stamp "drafters"
  PRESET=small TARGET=$TARGET OUT=$DR PARALLEL=${PARALLEL:-5} SKIP_BENCH=1 bash recipes/reference_drafters.sh
fi
if stage timing && [ ! -f "$R/timing.txt" ]; then
  stamp "timing"
  $PY scripts/bench_tau.py --target "$TARGET" --prompts "$TIMING" --drafts dspark=$DR/dspark/lean-bf16 --plain \
      --temperature 1.0 --max-prompts 1000 --max-new-tokens 256 --batch-size ${TIMING_BATCH:-500} | tee "$R/timing.txt.tmp"
  mv "$R/timing.txt.tmp" "$R/timing.txt"
fi
if stage eval; then
  stamp "eval + sweep"
  [ -n "$SWEEP" ] && ( DATA=$DR/continuations.jsonl PRESET=small TARGET=$TARGET OUT=$R/sweep PARALLEL=${PARALLEL:-5} RUNS="$SWEEP" \
    EXTRA_DRAFTS="dspark-g7=$DR/dspark/lean-bf16 dflash-g7=$DR/dflash/lean-bf16 dspark-rnn-g7=$DR/dspark-rnn/lean-bf16" \
    bash recipes/gamma_sweep.sh > "$R/sweep.log" 2>&1; echo "sweep rc=$?" ) &
  RUNS_EVAL="dspark-cal:$R/eval/dspark-cal dflash:$DR/dflash/lean-bf16 eagle3:$DR/eagle3/lean-bf16 mtp:$DR/mtp/lean-bf16"
  TARGET=$TARGET DRAFTS=$DR OUT=$R/eval TEMPS="1.0 0.0" PARALLEL=${EVAL_PARALLEL:-4} RUNS="$RUNS_EVAL" \
      bash recipes/eval_reference.sh
  wait
  [ -n "$SWEEP" ] && tail -n 25 "$R/sweep.log"
fi
stamp "finished"
