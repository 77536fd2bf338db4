#!/usr/bin/env bash
# Calibrate the DSpark drafter (STS) on held-out prompts, then evaluate every drafter of a reference
# target on the benchmark prompt sets plus held-out code, side by side (docs/benchmarks/quality.md).
#   DATASETS=../shared/datasets HELDOUT=.carry/ref/prompts_heldout.jsonl DRAFTS=.carry/ref/run1 \
#   OUT=runs/eval DEVICE=cuda bash recipes/eval_reference.sh
# TEMPS="1.0 0.0" evaluates at several temperatures; PARALLEL=4 runs the evaluations side by side
# (each into OUT/eval-NAME-TT.log); SKIP_CALIBRATE=1 reuses OUT/dspark-cal.
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/_jobs.sh
PY=${PYTHON:-python3}; OUT=${OUT:-runs/eval}; DEVICE=${DEVICE:-cuda}; TARGET=${TARGET:-src/dspark/assets/tiny-target}
DATASETS=${DATASETS:-../shared/datasets}; DRAFTS=${DRAFTS:-.carry/ref/run1}
SETS=${SETS:-"gsm8k math500 aime25 mbpp humaneval livecodebench mt-bench arena-hard-v2"}
mkdir -p "$OUT"
sed -n 1,200p "$HELDOUT" > "$OUT/calib.jsonl"
sed -n 201,500p "$HELDOUT" > "$OUT/heldout-code.jsonl"
FILES=("$OUT/heldout-code.jsonl"); for s in $SETS; do FILES+=("$DATASETS/$s.jsonl"); done
if [ -z "${SKIP_CALIBRATE:-}" ]; then
  $PY -m dspark calibrate --target "$TARGET" --draft "$DRAFTS/dspark/lean-bf16" --data "$OUT/calib.jsonl" \
      --max-prompts 200 --max-new-tokens 128 --batch-size 200 --device "$DEVICE" --out "$OUT/dspark-cal" --overwrite
fi
RUNS=${RUNS:-"dspark-cal:$OUT/dspark-cal dflash:$DRAFTS/dflash/lean-bf16 eagle3:$DRAFTS/eagle3/lean-bf16 mtp:$DRAFTS/mtp/lean-bf16"}
for spec in $RUNS; do
  name=${spec%%:*}; dir=${spec#*:}
  for T in ${TEMPS:-1.0}; do
    job "$OUT/eval-$name-T$T.log" $PY -m dspark eval --target "$TARGET" --draft "$dir" --datasets "${FILES[@]}" \
        --temperature "$T" --max-prompts ${MAX_PROMPTS:-100} --max-new-tokens ${MAX_NEW_TOKENS:-256} \
        --batch-size ${BATCH:-256} --device "$DEVICE" --out "$OUT/eval-$name-T$T"
  done
done
jobs_wait
for log in "$OUT"/eval-*.log; do echo "== $log"; grep -A7 "^domain" "$log" || true; done
