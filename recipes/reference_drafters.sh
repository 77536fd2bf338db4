#!/usr/bin/env bash
# Drafters for a reference target: regenerate continuations with the target itself, train each method
# with the same data and step budget, export lean bf16 checkpoints, measure τ side by side.
#   PROMPTS=.carry/ref/prompts_train.jsonl HELDOUT=.carry/ref/prompts_heldout.jsonl OUT=runs/ref \
#   METHODS="dspark dflash" bash recipes/reference_drafters.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/ref}; METHODS=${METHODS:-"dspark dflash eagle3 mtp dspark-rnn"}; TARGET=${TARGET:-src/dspark/assets/tiny-target}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
DATA=${DATA:-$OUT/continuations.jsonl}
if [ ! -f "$DATA" ]; then
  $PY -m dspark.train.continuations --target "$TARGET" --prompts "$PROMPTS" --out "$DATA" \
      --new-tokens ${NEW_TOKENS:-192} --batch-size ${REGEN_BATCH:-1024} --temperature 1.0
fi
DRAFTS=()
for m in $METHODS; do
  t0=$(date +%s)
  $PY -m dspark train --config configs/reference/tiny-$m.toml --set target="$TARGET" --set data="[\"$DATA\"]" \
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
  DRAFTS+=("$m=$OUT/$m/lean-bf16")
done
[ -n "${SKIP_BENCH:-}" ] && exit 0
$PY scripts/bench_tau.py --target "$TARGET" --prompts "$HELDOUT" --drafts "${DRAFTS[@]}" --temperature 1.0 0.0 \
    --max-prompts ${BENCH_PROMPTS:-256} --max-new-tokens ${BENCH_TOKENS:-128}
