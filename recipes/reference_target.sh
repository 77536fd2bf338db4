#!/usr/bin/env bash
# Build a reference target model from scratch: corpus → tokenizer → pretrain (docs/benchmarks/reference_target.md).
#
#   recipes/reference_target.sh tiny     # ~6.8M parameters, about 4 minutes of training on one H200
#   recipes/reference_target.sh small    # ~61M parameters, about 13 minutes of training on one H200
#
# Uses the GPU when torch sees one, else the CPU (slow: fine for a smoke run with STEPS=20).
# Environment overrides: RUNS (default runs/reference), CORPUS, TOKENIZER, OUT, VOCAB (8192),
# STEPS, TIME_BUDGET (seconds), DEVICE (auto), PRETRAIN_ARGS (more `dspark pretrain` flags, e.g.
# "--batch-size 2 --seq-len 128" for a smoke run). An existing corpus or tokenizer is reused, so the
# tiny and small targets share one tokenizer; delete the directory to rebuild it.
set -euo pipefail

PRESET=${1:-tiny}
case "$PRESET" in tiny|small) ;; *) echo "usage: $0 tiny|small" >&2; exit 2 ;; esac

RUNS=${RUNS:-runs/reference}
CORPUS=${CORPUS:-$RUNS/corpus}
TOKENIZER=${TOKENIZER:-$RUNS/tokenizer}
OUT=${OUT:-$RUNS/$PRESET-target}
VOCAB=${VOCAB:-8192}
DEVICE=${DEVICE:-auto}

if command -v dspark >/dev/null 2>&1; then
    DSPARK=(dspark)
else  # a source checkout without the package installed: PYTHONPATH=src
    DSPARK=(python3 -c 'import sys; from dspark.cli import main; sys.exit(main())')
fi

if [ ! -f "$CORPUS/provenance.json" ]; then
    echo "== corpus -> $CORPUS"
    "${DSPARK[@]}" -v data corpus --out "$CORPUS"
fi
if [ ! -f "$TOKENIZER/tokenizer.json" ]; then
    echo "== tokenizer -> $TOKENIZER"
    "${DSPARK[@]}" -v tokenizer --corpus "$CORPUS" --vocab-size "$VOCAB" --out "$TOKENIZER"
fi

echo "== pretrain $PRESET -> $OUT"
EXTRA=()
[ -n "${STEPS:-}" ] && EXTRA+=(--steps "$STEPS")
[ -n "${TIME_BUDGET:-}" ] && EXTRA+=(--time-budget "$TIME_BUDGET")
read -ra MORE <<<"${PRETRAIN_ARGS:-}"; EXTRA+=("${MORE[@]}")
"${DSPARK[@]}" -v pretrain --preset "$PRESET" --corpus "$CORPUS" --tokenizer "$TOKENIZER" --out "$OUT" \
    --device "$DEVICE" --cache-dir "$RUNS/token-cache" "${EXTRA[@]}"
du -sh "$OUT"
