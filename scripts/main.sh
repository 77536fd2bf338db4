#!/usr/bin/env bash
# The README's main job on a fresh machine: install dspark, then generate with the embedded default
# model (a tiny target trained by recipes/reference_target.sh and its DSpark drafter) on the CPU,
# printing the text, τ and the speed against plain decoding measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -c "import torch" 2>/dev/null || $PY -m pip install -q torch==2.13.0
$PY -m pip install -q -e .
exec $PY -m dspark generate --prompt "${1:-def fibonacci(n):}" --max-new-tokens "${MAX_NEW_TOKENS:-96}" --temperature 0
