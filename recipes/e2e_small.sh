#!/usr/bin/env bash
# Issue 11's end-to-end number in ONE device lease of one H200: rebuild the `small` reference target by its
# recipe (reduced budget), train its DSpark drafter (γ = 7, Markov head, confidence head, STS calibration),
# then time plain against speculative decoding one request at a time, T = 0 and T = 1, beside the ideal
# from the same run's profile (scripts/bench_e2e.py), plus the profiled SPS table's PNG.
#
# 1. Here, on the CPU machine, once (7 min on 2 cores with the corpus build, 27.5 MB; ../shared NOT needed):
#      STAGES=prep bash recipes/e2e_small.sh
#    builds .carry/e2e/ (git-ignored, carried to the device):
#      corpus/    `dspark data corpus` of this machine's Python (kept in runs/corpus-full), its train split
#                 trimmed by content hash (sha256 prefix < TRIM = 0.35 of its range: 6,262 of 19,177 files,
#                 18.6 MB gz, ~34M tokens with the chat documents; validation, test, chat documents and
#                 provenance as built; provenance.json records the trim);
#      ref/       prompts_{train,heldout,test1000}.jsonl.gz from scripts/make_prompt_windows.py over the
#                 FULL corpus (64-token windows: drafter training prompts, calibration, timing prompts).
#    The tokenizer is the embedded tiny target's (src/dspark/assets/tiny-target: the tokenizer of every
#    reference target), so nothing else travels. The working tree + .carry/e2e must stay under 64 MiB.
# 2. On the device (run tool, kind nvidia-h200, carry [".carry/e2e"]), three commands BACK TO BACK: the
#    machine keeps runs/ only while warm (30 s after a call), so send each as soon as the last returns:
#      STAGES=target  bash recipes/e2e_small.sh    # ~6 min: pretrain small, TIME_BUDGET=300 s (timeout_s 600)
#      STAGES=drafter bash recipes/e2e_small.sh    # ~5-7 min: regenerate 21,682 continuations (~125 s), train
#                                                   #   DSpark (~1,000 steps), lean bf16 copy, STS calibration
#      STAGES=bench   bash recipes/e2e_small.sh    # ~2-3 min: bench_e2e (T = 0, 1) + SPS table + PNG
#    Each writes what comes back to $OUT (the run tool's folder; RESULTS= elsewhere), at most 8 files:
#    target.log + target_training_summary.json; drafter.log, dspark-train.log, continuations.meta.json,
#    calibration.json; bench.log, bench_e2e.json, sps.json, sps.png. If the machine went cold between
#    calls, start again from STAGES=target (nothing of a cold machine survives).
#    Two calls also fit: STAGES="target regen" (~8 min), then STAGES="drafter bench" (~7 min).
# Each stage is skipped when its output exists (in RUNS, default runs/e2e-small), so a rerun resumes; a
# training killed half-way is started again from scratch.
#
# Environment: TIME_BUDGET (pretraining s, 300), TRIM (0.35), REGEN_PROMPTS (all 21,682: training prompts
# regenerated), NEW_TOKENS (192), EXTRA_SET (more `dspark train --set k=v`, e.g. "--set max_steps=600"),
# CALIBRATE (1), CAL_PROMPTS (200), NUM_PROMPTS (40, timed per temperature), MAX_NEW_TOKENS (256),
# TEMPS (0,1), POLICY (fixed:7), BENCH_ARGS (more bench_e2e flags), DEVICE (auto), CARRY (.carry/e2e),
# RUNS, RESULTS. SMOKE=1: tiny budgets everywhere, for a CPU rehearsal of the whole flow (minutes):
#   SMOKE=1 RUNS=/tmp/e2e-smoke RESULTS=/tmp/e2e-smoke/out STAGES="target drafter bench" bash recipes/e2e_small.sh
# (5.5 min on the 2-core CPU machine: 81 s target, 70 s drafter, 256 s bench; the numbers mean nothing there).
set -eEuo pipefail
trap 'echo "[$(date +%T)] FAILED (rc=$?): $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
STAGES=${STAGES:-"target drafter bench"}
CARRY=${CARRY:-.carry/e2e}; R=${RUNS:-runs/e2e-small}; RES=${RESULTS:-${OUT:-$R/results}}
TOKENIZER=${TOKENIZER:-src/dspark/assets/tiny-target}; TARGET=$R/small-target; DR=$R/drafter; DEVICE=${DEVICE:-auto}
if [ -n "${SMOKE:-}" ]; then  # CPU rehearsal: every stage with tiny budgets
  : "${PRETRAIN_ARGS:=--steps 2 --batch-size 2 --seq-len 64 --eval-tokens 128 --eval-every 1000 --warmup-steps 1}"
  : "${REGEN_PROMPTS:=8}" "${NEW_TOKENS:=16}" "${REGEN_BATCH:=8}" "${CAL_PROMPTS:=4}" "${CAL_TOKENS:=8}"
  : "${EXTRA_SET:=--set max_steps=2 --set global_batch=4 --set micro_batch=4 --set eval_every=1000 --set max_eval_samples=2 --set tensorboard=false}"
  : "${NUM_PROMPTS:=2}" "${MAX_NEW_TOKENS:=8}" "${BENCH_ARGS:=--repeats 1 --warmup 0 --sps-requests 1,2}"
  export PRETRAIN_ARGS
else
  : "${TIME_BUDGET:=300}"
  export TIME_BUDGET
fi
mkdir -p "$R" "$RES"
stage() { [[ " $STAGES " == *" $1 "* ]]; }
stamp() { echo "[$(date +%T)] $*"; }
need() { [ -e "$1" ] || { echo "error: $1 is missing: $2" >&2; exit 1; }; }
unpack() {  # $CARRY/ref/NAME.jsonl.gz -> $R/ref/NAME.jsonl, its first $2 lines (awk reads it all: no SIGPIPE)
  [ -f "$R/ref/$1.jsonl" ] && return 0
  mkdir -p "$R/ref"
  gunzip -c "$CARRY/ref/$1.jsonl.gz" | awk -v n="${2:-1000000}" 'NR <= n' > "$R/ref/$1.jsonl.tmp"
  mv "$R/ref/$1.jsonl.tmp" "$R/ref/$1.jsonl"
}

prep() {  # on the CPU machine: corpus, prompt windows, trimmed copy in $CARRY
  local full=${FULL_CORPUS:-runs/corpus-full}
  [ -f "$full/provenance.json" ] || $PY -m dspark -v data corpus --out "$full"
  if [ ! -f "$CARRY/ref/prompts_test1000.jsonl.gz" ]; then
    $PY scripts/make_prompt_windows.py --corpus "$full" --tokenizer "$TOKENIZER" --out "$R/prep-ref"
    mkdir -p "$CARRY/ref"
    for f in prompts_train prompts_heldout prompts_test1000; do gzip -9nc "$R/prep-ref/$f.jsonl" > "$CARRY/ref/$f.jsonl.gz"; done
  fi
  [ -f "$CARRY/corpus/provenance.json" ] || $PY - "$full" "$CARRY/corpus" "${TRIM:-0.35}" <<'PYEOF'
import gzip, json, os, shutil, sys
from pathlib import Path
from dspark.reference.corpus import open_gzip_text
src, dst, frac = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
tmp = dst.with_name(dst.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
shutil.copytree(src, tmp, ignore=lambda d, names: ["train.jsonl.gz"] if Path(d) == src else [])
kept = seen = 0
with gzip.open(src / "train.jsonl.gz", "rt", encoding="utf-8") as fin, open_gzip_text(tmp / "train.jsonl.gz") as fout:
    for line in fin:  # keep a document by its content hash: the same share of every package
        seen += 1
        if int(json.loads(line)["sha256"][:8], 16) < frac * 2**32:
            fout.write(line)
            kept += 1
prov = json.loads((tmp / "provenance.json").read_text())
prov["trimmed"] = {"train_fraction": frac, "train_documents_kept": kept, "train_documents_seen": seen,
                   "by": "recipes/e2e_small.sh prep (sha256 prefix < fraction)"}
(tmp / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
os.replace(tmp, dst)
print(f"{dst}: kept {kept} of {seen} train documents")
PYEOF
  du -sh "$CARRY" "$CARRY"/*
}

target() {  # the small reference target, by its recipe, with the time budget above
  need "$CARRY/corpus/provenance.json" "run STAGES=prep here and carry $CARRY"
  if [ ! -f "$TARGET/config.json" ]; then
    RUNS=$R CORPUS=$CARRY/corpus TOKENIZER=$TOKENIZER OUT=$TARGET DEVICE=$DEVICE bash recipes/reference_target.sh small
  fi
  cp "$TARGET/training_summary.json" "$RES/target_training_summary.json"
}

regen() {  # the target's own continuations of the training windows (recipes/reference_drafters.sh's first step)
  need "$TARGET/config.json" "run STAGES=target first (in this warm machine)"
  unpack prompts_train "${REGEN_PROMPTS:-1000000}"
  if [ ! -f "$DR/continuations.jsonl" ]; then
    mkdir -p "$DR"
    local t0; t0=$(date +%s)
    $PY -m dspark.train.continuations --target "$TARGET" --prompts "$R/ref/prompts_train.jsonl" --out "$DR/continuations.jsonl" \
        --new-tokens "${NEW_TOKENS:-192}" --batch-size "${REGEN_BATCH:-1024}" --temperature 1.0
    echo "regenerated $DR/continuations.jsonl in $(( $(date +%s) - t0 )) s"
  fi
  cp "$DR/continuations.jsonl.meta.json" "$RES/continuations.meta.json"
}

drafter() {  # DSpark (configs/reference/small-dspark.toml: γ 7, Markov rank 64, confidence head), lean bf16, STS
  [ -f "$DR/continuations.jsonl" ] || regen
  if [ ! -f "$DR/dspark/lean-bf16/config.json" ]; then
    rm -rf "$DR/dspark"  # a training cut off by the time limit restarts from scratch
    PROMPTS=unused PRESET=small TARGET=$TARGET OUT=$DR METHODS=dspark DATA=$DR/continuations.jsonl SKIP_BENCH=1 \
        EXTRA_SET="${EXTRA_SET:-}" bash recipes/reference_drafters.sh
  fi
  cp "$DR/dspark.log" "$RES/dspark-train.log"
  if [ "${CALIBRATE:-1}" = 1 ] && [ ! -f "$DR/dspark-cal/config.json" ]; then
    unpack prompts_heldout
    $PY -m dspark calibrate --target "$TARGET" --draft "$DR/dspark/lean-bf16" --data "$R/ref/prompts_heldout.jsonl" \
        --max-prompts "${CAL_PROMPTS:-200}" --max-new-tokens "${CAL_TOKENS:-128}" --batch-size "${CAL_PROMPTS:-200}" \
        --device "$DEVICE" --output-dir "$DR/dspark-cal" --overwrite --no-plots
  fi
  [ -f "$DR/dspark-cal/calibration.json" ] && cp "$DR/dspark-cal/calibration.json" "$RES/calibration.json"
  return 0
}

bench() {  # one request at a time, plain vs speculative, T = 0 and 1, ideal from the profile; SPS plot
  need "$DR/dspark/lean-bf16/config.json" "run STAGES=drafter first (in this warm machine)"
  local draft=$DR/dspark-cal
  [ -f "$draft/config.json" ] || draft=$DR/dspark/lean-bf16
  unpack prompts_test1000
  read -ra more <<<"${BENCH_ARGS:-}"
  $PY scripts/bench_e2e.py --target "$TARGET" --draft "$draft" --device "$DEVICE" --prompts "$R/ref/prompts_test1000.jsonl" \
      --num-prompts "${NUM_PROMPTS:-40}" --max-new-tokens "${MAX_NEW_TOKENS:-256}" --temperatures "${TEMPS:-0,1}" \
      ${POLICY:+--policy "$POLICY"} --sps-plot "$RES/sps.png" --out "$RES" "${more[@]}"
}

for s in prep target regen drafter bench; do
  if stage "$s"; then
    t0=$(date +%s)
    stamp "stage $s" | tee "$RES/$s.log"
    "$s" 2>&1 | tee -a "$RES/$s.log"
    stamp "stage $s done in $(( $(date +%s) - t0 )) s" | tee -a "$RES/$s.log"
  fi
done
