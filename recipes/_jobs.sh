# Run recipe steps concurrently (sourced by the recipes): at most $PARALLEL at a time (default 1),
# each into its own log file, with the exit status kept beside it (LOG.rc).
#   job LOG command args...     start one (waits for a free slot first)
#   jobs_wait                   wait for all; print the failed ones with their last lines; 1 if any failed
# Small drafters are launch-bound on a GPU, so several trainings on one GPU finish sooner together.
JOB_LOGS=()

job() {
  local log=$1; shift
  while [ "$(jobs -rp | wc -l)" -ge "${PARALLEL:-1}" ]; do sleep 1; done
  mkdir -p "$(dirname "$log")"
  echo "[$(date +%T)] start $(basename "$log" .log)"
  ( set +e; "$@" >"$log" 2>&1; rc=$?; echo $rc >"$log.rc"; echo "[$(date +%T)] done $(basename "$log" .log) rc=$rc" ) &
  JOB_LOGS+=("$log")
}

jobs_wait() {
  wait
  local bad=0 log rc
  for log in "${JOB_LOGS[@]}"; do
    rc=$(cat "$log.rc" 2>/dev/null || echo missing)
    if [ "$rc" != 0 ]; then echo "FAILED (rc=$rc): $log"; tail -n 5 "$log"; bad=1; fi
  done
  JOB_LOGS=()
  return $bad
}
