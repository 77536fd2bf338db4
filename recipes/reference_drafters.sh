#!/usr/bin/env bash
# Drafters for a reference target: regenerate continuations with the target itself, train each method
# with the same data and step budget, export lean bf16 checkpoints, measure τ side by side.
#   PROMPTS=.carry/ref/prompts_train.jsonl HELDOUT=.carry/ref/prompts_heldout.jsonl OUT=runs/ref \
#   METHODS="dspark dflash" bash recipes/reference_drafters.sh
# PRESET=small TARGET=runs/reference/small-target uses configs/reference/small-*.toml; PARALLEL=5 trains
# the methods side by side on one GPU (each into OUT/METHOD.log).
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/_jobs.sh
OUT=${OUT:-runs/ref}; METHODS=${METHODS:-"dspark dflash eagle3 mtp dspark-rnn"}; TARGET=${TARGET:-src/dspark/assets/tiny-target}
PRESET=${PRESET:-tiny}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
DATA=${DATA:-$OUT/continuations.jsonl}
if [ ! -f "$DATA" ]; then
  t0=$(date +%s)
  $PY -m dspark.train.continuations --target "$TARGET" --prompts "$PROMPTS" --out "$DATA" \
      --new-tokens ${NEW_TOKENS:-192} --batch-size ${REGEN_BATCH:-1024} --temperature 1.0
  echo "regenerated $DATA in $(( $(date +%s) - t0 )) s"
fi

train_one() {  # METHOD: train, then save a lean bf16 copy (no frozen target weights) beside the run
  local m=$1 t0; t0=$(date +%s)
  $PY -m dspark train --config configs/reference/$PRESET-$m.toml --set target="$TARGET" --set data="[\"$DATA\"]" \
      --set output_dir="$OUT/$m" ${EXTRA_SET:-}
  $PY - "$OUT/$m" "$TARGET" <<'PYEOF'
import sys, torch
from dspark import load_drafter, load_target
from dspark.formats import save_drafter
run, target = sys.argv[1], load_target(sys.argv[2])
d = load_drafter(f"{run}/final", target=target).to(torch.bfloat16)
save_drafter(d, f"{run}/lean-bf16", include_frozen=False, overwrite=True)
PYEOF
  echo "trained $m in $(( $(date +%s) - t0 )) s"
}

DRAFTS=()
for m in $METHODS; do
  job "$OUT/$m.log" train_one "$m"
  DRAFTS+=("$m=$OUT/$m/lean-bf16")
done
jobs_wait
grep -h "^trained " "$OUT"/*.log || true
[ -n "${SKIP_BENCH:-}" ] && exit 0
$PY scripts/bench_tau.py --target "$TARGET" --prompts "$HELDOUT" --drafts "${DRAFTS[@]}" --temperature 1.0 0.0 \
    --max-prompts ${BENCH_PROMPTS:-256} --max-new-tokens ${BENCH_TOKENS:-128}
