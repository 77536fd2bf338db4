#!/usr/bin/env bash
# The `small` reference target and its REAL trained drafters in ONE device lease of one H200: rebuild the
# target by its recipe (reduced budget), train its DSpark drafter (γ = 7, Markov head, confidence head, STS
# calibration) and an MTP-1 drafter on the same regenerated continuations, then
#   frontier: issue 13 (a), scripts/bench_frontier.py: every default policy (none, mtp1, fixed:3/5/7, dspark,
#             dspark-async, each but mtp1 also +gate) × C = 1, 2, 4, …, 256 closed-loop clients, T = 1, 256
#             tokens a request, the simulator beside every point (--simulate); table, JSON, PNG;
#   bench:    issue 11 (not in the default STAGES), scripts/bench_e2e.py: plain against speculative decoding one
#             request at a time, T = 0 and 1, beside the ideal from the same run's profile, and the SPS PNG.
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
#    Before the lease, rehearse the device flow here (the engine changes under it): the SMOKE line below.
# 2. On the device (run tool, kind nvidia-h200, carry [".carry/e2e"], timeout_s 600), three commands BACK
#    TO BACK: the machine keeps runs/ only while warm (30 s after a call), so send each as soon as the last
#    returns; the lease is 30 min of device time with the ~3.5 min start:
#      STAGES="target regen" bash recipes/e2e_small.sh         # ~8 min: pretrain small, TIME_BUDGET=300 s
#                                                              #   (338 s on 2026-12-02), regenerate 21,682
#                                                              #   continuations (~125 s)
#      STAGES="drafter mtp frontier" bash recipes/e2e_small.sh # 9.5 min (CALL_LIMIT=570): DSpark and MTP-1
#                                                              #   side by side on the GPU (~1,005 steps each,
#                                                              #   ~4 min together, estimated: DSpark alone took
#                                                              #   167 s), STS calibration (~40 s), then the
#                                                              #   frontier for the rest of the call (~4 min)
#      CALL_LIMIT=S STAGES=frontier bash recipes/e2e_small.sh  # the policies still missing; S = status's
#                                                              #   budget_left_s - 90, at most 570 (~7-8 min)
#    ≈ 3.5 + 8 + 9.5 + 7.5 = 28.5 min. Measured on 2026-12-02 (session 7): call 1 465 s (target 335 s, regen
#    130 s); DSpark + MTP-1 trainings side by side 158 s, STS calibration 26 s, bench 63 s; frontier: none +
#    mtp1 at all 9 C 66 s, two drafting policies at C = 1, 4, 16, 64 43 s. Results go to RESULTS (default
#    $RUNS/results); on the device ($OUT set) each call copies ITS stage logs to $OUT plus results.tgz (all of
#    RESULTS: target_training_summary.json, continuations.meta.json, calibration.json, bench_e2e.json, sps.png,
#    frontier.{log,json,png}, frontier-sim.tar.gz = --sim-dir: each policy's SPS table, step-cost terms and
#    round trace, for `dspark simulate --cost`), within the run tool's 8 files. If policies are still missing and the
#    machine is warm with > 5 min left, one more CALL_LIMIT=S STAGES=frontier. If it went cold between calls,
#    nothing survived: start again from the first call.
# Each stage is skipped when its output exists (in RUNS, default runs/e2e-small), so a rerun resumes; a
# training killed half-way is started again from scratch; the frontier resumes by policy (RUNS/frontier/
# part-K.json, rewritten by bench_frontier after each policy; recipes/_frontier.py runs the missing ones, most
# telling first, and joins the parts), and it stops CALL_LIMIT s after the recipe started (the policy in
# flight is lost, the finished ones are kept and joined).
#
# Frontier budget (estimated from docs/benchmarks/serving.md's first GPU grid: C <= 64, 128 tokens): a point
# runs ~(W + N)/C + 1 request lifetimes of 256/τ steps (W warm-up, N measured requests); a drafted step costs
# ~2.7 ms at C = 1, 8 ms at 16, 20 ms at 64 (eager prefill steps included), ~35-50 ms at 256 (extrapolated), a
# plain one 1.6 / 2.1 / 3.8 ms. bench_frontier's defaults (W = max(2C, 16), N = max(16, 2C)) would take ~95 s a
# drafted policy, ~19 min for the 12: not in a lease. So FRONTIER_WARMUP=1,4 (W = max(C, 4): a full lifetime
# of warm-up at C >= 4, most batch shapes' graphs captured before the window) and FRONTIER_REQUESTS=8 (N = 8:
# the window is the 8 measured requests' lifetime at full load; throughput counts every client's tokens in it,
# per-user / TPOT / TTFT are over those 8): ~48 s a drafted policy, ~25 s for none, ~9.5 min for the grid plus
# ~1.5-2 min of engine builds, SPS profiles and the simulator's cost measurements (its re-profiles at C = 128,
# 256, per policy); calls 2 and 3 give it ~11.5 min, so the last policy or two may be left for a fourth call.
# Graph captures per point: the JSON's points[].extra (graphs, eager_steps). FRONTIER_WARMUP=2,16
# FRONTIER_REQUESTS= gives bench_frontier's defaults back.
#
# Environment: TIME_BUDGET (pretraining s, 300), TRIM (0.35), REGEN_PROMPTS (all 21,682: training prompts
# regenerated), NEW_TOKENS (192), EXTRA_SET (more `dspark train --set k=v` for both drafters, e.g. "--set
# max_steps=600"), PARALLEL (trainings at once: both), CALIBRATE (1), CAL_PROMPTS (200), NUM_PROMPTS (40,
# timed per temperature), MAX_NEW_TOKENS (256), TEMPS (0,1), POLICY (fixed:7), BENCH_ARGS (more bench_e2e
# flags), FRONTIER_POLICIES (the 12 above, most telling first), FRONTIER_CONC (1,...,256), FRONTIER_TOKENS
# (256), FRONTIER_REQUESTS (8), FRONTIER_WARMUP (1,4), FRONTIER_SIMULATE (1), FRONTIER_ARGS (more
# bench_frontier flags), CALL_LIMIT (s from the recipe's start; 570 when $OUT is set, i.e. on the device, else
# 0: none), DEVICE (auto), CARRY (.carry/e2e), RUNS, RESULTS. SMOKE=1: tiny budgets everywhere, for a CPU
# rehearsal of the whole flow (frontier: none, mtp1, dspark-async+gate, fixed:3 at C = 1, 2, 8 tokens):
#   SMOKE=1 RUNS=/tmp/e2e-smoke RESULTS=/tmp/e2e-smoke/out STAGES="target drafter mtp frontier" bash recipes/e2e_small.sh
# (3.3 min on the 2-core CPU machine, 2026-12-02: 62 s target, 71 s drafter with MTP-1 beside it, 63 s
# frontier; bench: ~4 min more with STAGES="... bench"; the numbers mean nothing there).
set -eEuo pipefail
trap 'echo "[$(date +%T)] FAILED (rc=$?): $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
STAGES=${STAGES:-"target drafter mtp frontier"}
CARRY=${CARRY:-.carry/e2e}; R=${RUNS:-runs/e2e-small}; RES=${RESULTS:-$R/results}
TOKENIZER=${TOKENIZER:-src/dspark/assets/tiny-target}; TARGET=$R/small-target; DR=$R/drafter; DEVICE=${DEVICE:-auto}
if [ -n "${SMOKE:-}" ]; then  # CPU rehearsal: every stage with tiny budgets
  : "${PRETRAIN_ARGS:=--steps 2 --batch-size 2 --seq-len 64 --eval-tokens 128 --eval-every 1000 --warmup-steps 1}"
  : "${REGEN_PROMPTS:=8}" "${NEW_TOKENS:=16}" "${REGEN_BATCH:=8}" "${CAL_PROMPTS:=4}" "${CAL_TOKENS:=8}"
  : "${EXTRA_SET:=--set max_steps=2 --set global_batch=4 --set micro_batch=4 --set eval_every=1000 --set max_eval_samples=2 --set tensorboard=false}"
  : "${NUM_PROMPTS:=2}" "${MAX_NEW_TOKENS:=8}" "${BENCH_ARGS:=--repeats 1 --warmup 0 --sps-requests 1,2}"
  : "${FRONTIER_POLICIES:=none,mtp1,dspark-async+gate,fixed:3}" "${FRONTIER_CONC:=1,2}" "${FRONTIER_TOKENS:=8}"
  : "${FRONTIER_REQUESTS:=2}" "${FRONTIER_WARMUP:=1,1}" "${CALL_LIMIT:=0}"
  export PRETRAIN_ARGS
else
  : "${TIME_BUDGET:=300}"
  export TIME_BUDGET
fi
# issue 13 (a): bench_frontier's default policies for a DSpark drafter with a confidence head beside an MTP-1 one
# (MTP-1 has no confidence head, so no mtp1+gate), most telling first: a cut run keeps those
: "${FRONTIER_POLICIES:=none,mtp1,dspark-async+gate,dspark+gate,fixed:7,dspark-async,dspark,fixed:3,fixed:7+gate,fixed:3+gate,fixed:5,fixed:5+gate}"
: "${FRONTIER_CONC:=1,2,4,8,16,32,64,128,256}" "${FRONTIER_TOKENS:=256}" "${FRONTIER_REQUESTS=8}" "${FRONTIER_WARMUP:=1,4}"
CALL_LIMIT=${CALL_LIMIT:-$([ -n "${OUT:-}" ] && echo 570 || echo 0)}  # s; on the device ($OUT set): the 10-minute call
T0=$(date +%s)
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
  # the run tool refuses a working tree + carry over 64 MiB (session 17 lost its lease start to it)
  local mib
  mib=$( { git ls-files -z | xargs -0 stat -c %s; find "$CARRY" -type f -printf '%s\n'; } | awk '{s += $1} END {printf "%.1f", s / 1048576}')
  echo "tracked files + $CARRY: $mib MiB (the device's limit: 64 MiB)"
  awk -v m="$mib" 'BEGIN {exit !(m > 62)}' && echo "WARNING: over 62 MiB: lower TRIM or move large raw results out" >&2 || true
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

train() {  # METHOD...: those without a lean bf16 copy yet, side by side (configs/reference/small-METHOD.toml)
  local todo=() m
  for m in "$@"; do [ -f "$DR/$m/lean-bf16/config.json" ] || todo+=("$m"); done
  [ ${#todo[@]} -gt 0 ] || return 0
  for m in "${todo[@]}"; do rm -rf "$DR/$m"; done  # a training cut off by the time limit restarts from scratch
  PROMPTS=unused PRESET=small TARGET=$TARGET OUT=$DR METHODS="${todo[*]}" DATA=$DR/continuations.jsonl SKIP_BENCH=1 \
      PARALLEL=${PARALLEL:-${#todo[@]}} EXTRA_SET="${EXTRA_SET:-}" bash recipes/reference_drafters.sh
}

trainlog() {  # METHOD: its training log without the progress bar's redraws (the last one kept)
  echo "--- $DR/$1.log"
  tr '\r' '\n' < "$DR/$1.log" | grep -v -e '^train [a-z0-9-]*: ' -e '^$' || true
  tr '\r' '\n' < "$DR/$1.log" | grep '^train [a-z0-9-]*: ' | tail -n 1 || true
}

drafter() {  # DSpark (configs/reference/small-dspark.toml: γ 7, Markov rank 64, confidence head), lean bf16, STS;
             # with the mtp stage in STAGES, MTP-1 is trained beside it on the same GPU
  [ -f "$DR/continuations.jsonl" ] || regen
  if stage mtp; then train dspark mtp; else train dspark; fi
  trainlog dspark
  if [ "${CALIBRATE:-1}" = 1 ] && [ ! -f "$DR/dspark-cal/config.json" ]; then
    unpack prompts_heldout
    $PY -m dspark calibrate --target "$TARGET" --draft "$DR/dspark/lean-bf16" --data "$R/ref/prompts_heldout.jsonl" \
        --max-prompts "${CAL_PROMPTS:-200}" --max-new-tokens "${CAL_TOKENS:-128}" --batch-size "${CAL_PROMPTS:-200}" \
        --device "$DEVICE" --output-dir "$DR/dspark-cal" --overwrite --no-plots
  fi
  [ -f "$DR/dspark-cal/calibration.json" ] && cp "$DR/dspark-cal/calibration.json" "$RES/calibration.json"
  return 0
}

mtp() {  # MTP-1 (configs/reference/small-mtp.toml: one layer, one slot, no confidence head: nothing to calibrate),
         # on the DSpark drafter's continuations, same steps; lean bf16
  [ -f "$DR/continuations.jsonl" ] || regen
  train mtp
  trainlog mtp
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

frontier() {  # issue 13 (a): bench_frontier, every policy x C on the real drafters, T = 1; resumable by policy
  need "$DR/dspark/lean-bf16/config.json" "run STAGES=drafter first (in this warm machine)"
  local draft=$DR/dspark-cal F=$R/frontier rc=0 left=0 run=() more=() extra=()
  [ -f "$draft/config.json" ] || draft=$DR/dspark/lean-bf16
  [[ ",$FRONTIER_POLICIES," != *,mtp1,* ]] || need "$DR/mtp/lean-bf16/config.json" "run STAGES=mtp first (in this warm machine)"
  if [ -f "$DR/mtp/lean-bf16/config.json" ]; then more=(--mtp-drafter "$DR/mtp/lean-bf16"); fi
  if [ "${FRONTIER_SIMULATE:-1}" = 1 ]; then more+=(--simulate --sim-dir "$F/sim"); fi
  unpack prompts_test1000
  if [ "$CALL_LIMIT" -gt 0 ]; then  # what is left of this call, less the merge's half minute
    left=$(( CALL_LIMIT - ($(date +%s) - T0) - 30 ))
    run=(timeout -k 15 "$left")
  fi
  read -ra extra <<<"${FRONTIER_ARGS:-}"
  if [ "$CALL_LIMIT" -gt 0 ] && [ "$left" -lt 60 ]; then
    echo "frontier: only $left s left in this call (CALL_LIMIT=$CALL_LIMIT): run STAGES=frontier in the next one"
  else
    PYTHONUNBUFFERED=1 "${run[@]}" $PY recipes/_frontier.py run --parts "$F" --policies "$FRONTIER_POLICIES" \
        --warmup "$FRONTIER_WARMUP" -- --target "$TARGET" --drafter "$draft" --device "$DEVICE" \
        --prompts "$R/ref/prompts_test1000.jsonl" --concurrency "$FRONTIER_CONC" --max-tokens "$FRONTIER_TOKENS" \
        --temperature 1 ${FRONTIER_REQUESTS:+--num-requests "$FRONTIER_REQUESTS"} "${more[@]}" "${extra[@]}" || rc=$?
  fi
  case $rc in 124|137) echo "frontier: cut at this call's limit ($left s); STAGES=frontier measures the rest";; esac
  $PY recipes/_frontier.py merge --parts "$F" --policies "$FRONTIER_POLICIES" --json "$RES/frontier.json" \
      --plot "$RES/frontier.png"
  if [ -d "$F/sim" ]; then tar -czf "$RES/frontier-sim.tar.gz" -C "$F" sim; fi
  case $rc in 0|124|137) return 0;; *) return "$rc";; esac
}

ship() {  # on the device ($OUT set): the run tool brings back 8 files, so this call's stage logs + ONE tarball of $RES
  [ -n "${OUT:-}" ] || return 0
  local s
  for s in prep target regen drafter mtp bench frontier; do
    if stage "$s" && [ -f "$RES/$s.log" ]; then cp "$RES/$s.log" "$OUT/"; fi
  done
  tar -czf "$OUT/results.tgz" -C "$RES" .
}
trap ship EXIT

for s in prep target regen drafter mtp bench frontier; do
  if stage "$s"; then
    t0=$(date +%s)
    stamp "stage $s" | tee "$RES/$s.log"
    "$s" 2>&1 | tee -a "$RES/$s.log"
    stamp "stage $s done in $(( $(date +%s) - t0 )) s" | tee -a "$RES/$s.log"
  fi
done
