#!/usr/bin/env bash
# Run a study config for hours, the way issue 20 asks: in its own clone at a fixed commit (code changed in the
# working copy meanwhile re-runs nothing), at nice 19, resumable (run it again after a stop: Snakemake skips what is
# done and a training resumes from its last epoch's checkpoint), seed by seed (each seed's cells trained and scored
# before the next seed's start), and every INTERVAL seconds the report of the
# evaluations done so far (`eqseg report --partial`) copied into docs/results/NAME/ of this repository, for the
# developer to commit as cells complete.
#   bash bench/run_study.sh CONFIG NAME [COMMIT=HEAD] [CLONE=/tmp/eqseg-study-NAME]
#   e.g. setsid nohup bash bench/run_study.sh configs/study_weak.yaml study_weak 20bb7e9 > /dev/null 2>&1 &
# Env: CORES (2), INTERVAL (600). Progress: CLONE/run.log (Snakemake), CLONE/publish.log.
set -u
CONFIG=${1:?usage: run_study.sh CONFIG NAME [COMMIT] [CLONE]}
NAME=${2:?usage: run_study.sh CONFIG NAME [COMMIT] [CLONE]}
REPO=$(cd "$(dirname "$0")/.." && pwd)
COMMIT=${3:-$(git -C "$REPO" rev-parse HEAD)}
CLONE=${4:-/tmp/eqseg-study-$NAME}
CORES=${CORES:-2}
INTERVAL=${INTERVAL:-600}
OUT=$REPO/docs/results/$NAME

if [ ! -d "$CLONE" ]; then
  git clone -q "$REPO" "$CLONE" && git -C "$CLONE" checkout -q "$COMMIT" || exit 1
  ln -s "$REPO/.venv" "$CLONE/.venv"
fi
have=$(git -C "$CLONE" rev-parse HEAD)
if [ "$have" != "$(git -C "$REPO" rev-parse "$COMMIT")" ]; then
  echo "$CLONE is at $have, not $COMMIT: give another CLONE folder, or the commit it holds" >&2
  exit 1
fi
cd "$CLONE" || exit 1
# With the kernel's autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled), nice only orders processes of
# one session: a run started with `setsid` is a session of its own and would take a fair share of the cores from
# interactive work, whatever its nice. Its session's autogroup gets nice 19 too.
if [ "$(ps -o sid= -p $$ | tr -d ' ')" = "$$" ] && [ -w /proc/self/autogroup ]; then
  echo 19 > /proc/self/autogroup
fi
export PATH="$CLONE/.venv/bin:$PATH"
# The venv is the working copy's, where eqseg is installed editable (its src/ on the path): without this every job
# would import the working copy's code as it changes, not the commit's. The clone's src/ goes first, and is checked.
export PYTHONPATH="$CLONE/src${PYTHONPATH:+:$PYTHONPATH}"
imported=$(python -c "import eqseg; print(eqseg.__file__)")
if [ "$imported" != "$CLONE/src/eqseg/__init__.py" ]; then
  echo "run_study.sh: eqseg is imported from $imported, not from the clone $CLONE/src: refusing to run" >&2
  exit 1
fi

publish() {  # the report reads results, it makes none: the working copy's report code (its newest tables) reads them
  if PYTHONPATH="$REPO/src" nice -n 19 eqseg report --params "$CONFIG" --out results/report_partial --partial \
      > /dev/null 2>> publish.log; then
    mkdir -p "$OUT"
    cp results/report_partial/{report.md,*.csv,*.png} "$OUT"/ 2>> publish.log
    echo "$(date -u +%FT%TZ) published $(($(wc -l < results/report_partial/cells.csv) - 1)) evaluations at $COMMIT" >> publish.log
  fi
}

seed_targets() {  # the evaluations of one seed: so that cells are scored as they finish, seed by seed (the rules'
  # priorities, set for the default run's speed, would otherwise train every cell before scoring any)
  python - "$CONFIG" "$1" <<'PY'
import sys
from eqseg import paths
from eqseg.config import load_params
params = load_params(sys.argv[1])
print(" ".join(paths.EVAL.format(**e) + "/metrics.json" for e in params.evaluations() if e["seed"] == int(sys.argv[2])))
PY
}
run_all() {
  for seed in $(python -c "from eqseg.config import load_params; print(*load_params('$CONFIG').grid.seeds)"); do
    # shellcheck disable=SC2046
    nice -n 19 snakemake --cores "$CORES" --configfile "$CONFIG" --keep-going --rerun-incomplete \
      $(seed_targets "$seed") >> run.log 2>&1
  done
  nice -n 19 snakemake --cores "$CORES" --configfile "$CONFIG" --keep-going --rerun-incomplete >> run.log 2>&1
}
# a run stopped by a kill leaves Snakemake's lock behind: one run per clone, so it is stale here
nice -n 19 snakemake --cores "$CORES" --configfile "$CONFIG" --unlock >> run.log 2>&1
run_all &
snake=$!
descendants() { local c; for c in $(pgrep -P "$1"); do echo "$c"; descendants "$c"; done; }
# a stop reaches every job: Snakemake alone waits for its running jobs to end (hours for a training); a killed
# training resumes from its last epoch's checkpoint, and --rerun-incomplete re-runs its job
trap 'kill -TERM $(descendants $snake) $snake 2>/dev/null; wait $snake; publish; exit 130' INT TERM
while kill -0 "$snake" 2>/dev/null; do
  sleep "$INTERVAL" & wait $!
  publish
done
wait "$snake"; rc=$?
publish
echo "$(date -u +%FT%TZ) snakemake exited $rc" >> publish.log
exit $rc
