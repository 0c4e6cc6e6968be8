#!/usr/bin/env bash
# fp32 against bf16 on the default grid over 3 seeds (issue 19, point 5): each precision trains in its own clone at
# one commit, at nice 19, seed by seed (resumable: Snakemake skips finished cells); then pair them with
# bench/precision_accuracy.py. Usage: bash bench/precision_run.sh COMMIT [WORKDIR=/tmp/prec]
set -u
command -v snakemake > /dev/null || { echo "precision_run.sh: snakemake is not on PATH (activate the venv first)" >&2; exit 2; }
COMMIT=${1:?usage: precision_run.sh COMMIT [WORKDIR]}
WORK=${2:-/tmp/prec}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$WORK"
for p in fp32 bf16; do
  d=$WORK/$p
  [ -d "$d" ] || git clone -q "$REPO" "$d"
  (cd "$d" && git fetch -q "$REPO" && git checkout -q "$COMMIT") || { echo "precision_run.sh: no commit $COMMIT in $REPO" >&2; exit 2; }
  python - "$d" "$p" <<'PY'
import sys, yaml
d, p = sys.argv[1], sys.argv[2]
s = yaml.safe_load(open(f"{d}/params.yaml"))
s["grid"]["seeds"] = [0, 1, 2]
s["train"]["precision"] = p
s["mlflow"]["tracking_uri"] = f"sqlite:///{d}/mlflow.db"
yaml.safe_dump(s, open(f"{d}/params_prec.yaml", "w"), sort_keys=False)
PY
done
for seed in 0 1 2; do
  for p in bf16 fp32; do
    d=$WORK/$p
    targets=$(python - "$d" "$seed" <<'PY'
import sys, yaml
d, seed = sys.argv[1], sys.argv[2]
g = yaml.safe_load(open(f"{d}/params_prec.yaml"))["grid"]
print(" ".join(f"results/eval/{ds}/{m}/full/d4/b100/seed{seed}/{ds}/metrics.json" for ds in g["datasets"] for m in g["models"]))
PY
)
    echo "$(date +%T) seed $seed $p start" >> "$WORK/progress.log"
    (cd "$d" && PYTHONPATH=$d/src nice -n 19 /usr/bin/time -v snakemake $targets --cores 2 --configfile params_prec.yaml \
       > "$WORK/snake_${p}_$seed.log" 2> "$WORK/time_${p}_$seed.txt")
    rc=$?
    echo "$(date +%T) seed $seed $p done rc=$rc" >> "$WORK/progress.log"
    [ $rc -eq 0 ] || { echo "precision_run.sh: seed $seed $p failed (rc=$rc): $WORK/time_${p}_$seed.txt" >&2; exit $rc; }
  done
done
echo "then: python bench/precision_accuracy.py $WORK/fp32 $WORK/bf16 --out docs/results/precision/$COMMIT"
