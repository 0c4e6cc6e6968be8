#!/usr/bin/env bash
# The GPU check of issue 19, one script for a machine with a CUDA GPU (bench/README.md, "On a GPU: what one device
# call can carry"):
#   1. the tests that need CUDA (tests/test_cuda.py; skipped on a CPU), 2. bench/bench_train.py on the GPU,
#   3. the default pipeline (`snakemake --cores N`) on the GPU, timed, and its test scores.
# Everything it measures goes to $OUT (default bench/out/gpu): tests.log, train.json, pipeline.log, gpu.md (a
# markdown summary to paste into bench/README.md and the README). Usage, from the repository root:
#   OUT=/some/dir bash bench/gpu_check.sh [--quick | --bench]
# --quick: the tests and a short bench only (no pipeline), e.g. to check the script on a CPU: the tests skip and
# the bench runs on the CPU then. --bench: the tests and the whole bench, no pipeline: what one call to a lent
# device machine can carry (bench/gpu_wheels.sh; the pipeline's packages are 133 MB of wheels, over a call's limit).
# REPEATS, MODELS and SNAKEMAKE_ARGS override the bench's rounds and models and add words to the pipeline's
# command, e.g. the whole script on a CPU in minutes:
#   REPEATS=1 MODELS=unet SNAKEMAKE_ARGS="--configfile tests/smoke/params.yaml" OUT=/tmp/g bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=${1:-}
case "$QUICK" in ""|--quick|--bench) ;; *) echo "gpu_check: unknown option $QUICK (--quick, --bench)" >&2; exit 2;; esac
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python}
DEVICE=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
GPU=$($PY -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')")
echo "device: $DEVICE ($GPU)" | tee "$OUT/device.txt"

# 1. the CUDA tests (and the training-step tests that also run on the CPU)
$PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_precision.py -o addopts="" 2>&1 | tee "$OUT/tests.log" \
  | tail -3 || TESTS_FAILED=1  # go on: the bench and the pipeline are worth having even so

# 2. the training step
if [ "$QUICK" = "--quick" ]; then REPEATS=${REPEATS:-1}; MODELS=${MODELS:-unet p4m_unet}
else REPEATS=${REPEATS:-10}; MODELS=${MODELS:-unet p4_unet p4m_unet gridnet}; fi
$PY bench/bench_train.py --device "$DEVICE" --threads "$(nproc)" --repeats $REPEATS --models $MODELS --other-layout \
  --out "$OUT/train.json" 2>&1 | tee "$OUT/bench_train.log" | tail -30

# 3. the default pipeline on the GPU, in a scratch copy of the repository (results/ of this checkout untouched)
if [ -z "$QUICK" ]; then
  WORK=$(mktemp -d)
  bash bench/copy_tree.sh "$WORK"  # tracked files, links as links; all but the ignored ones without .git
  START=$SECONDS
  # shellcheck disable=SC2086  # SNAKEMAKE_ARGS: extra words, e.g. --configfile tests/smoke/params.yaml for a CPU check
  ( cd "$WORK" && snakemake --cores "$(nproc)" ${SNAKEMAKE_ARGS:-} ) > "$OUT/pipeline.log" 2>&1 \
    || { PIPELINE_FAILED=1; echo "pipeline failed: see $OUT/pipeline.log"; tail -30 "$OUT/pipeline.log"; }
  echo "Elapsed (wall clock): $((SECONDS - START)) s" > "$OUT/pipeline.time"
  cp "$WORK/results/report/summary.csv" "$WORK/results/report/cells.csv" "$OUT/" 2>/dev/null || true
  rm -rf "$WORK"
fi

# the summary
$PY - "$OUT" "$GPU" <<'PY'
import json, sys, pathlib
out, gpu = pathlib.Path(sys.argv[1]), sys.argv[2]
lines = [f"GPU check on {gpu}", ""]
bench = json.loads((out / "train.json").read_text())
lines += [f"host CPU: {bench.get('cpu', '?')}", ""]
tests = (out / "tests.log").read_text().strip().splitlines()
lines += [f"tests: {tests[-1] if tests else 'no output'}", ""]
lines += ["| model | case | ms / step | tiles / s | speed-up [quartiles] | GFLOP/s |", "|---|---|---|---|---|---|"]
lines += [f"| {r['model']} | {r['case']} | {r['ms']:.1f} | {r['tiles_per_s']:.0f} | {r['speedup']:.2f}x "
          f"[{r['speedup_q1']:.2f}, {r['speedup_q3']:.2f}] | {r['gflops']:.0f} |" for r in bench["rows"]]
timing = out / "pipeline.time"
if timing.is_file():
    wall = [l for l in timing.read_text().splitlines() if "Elapsed (wall clock)" in l]
    lines += ["", f"default pipeline: {wall[0].split(': ')[-1] if wall else 'see pipeline.time'}"]
cells = out / "cells.csv"
if cells.is_file():
    import csv
    keys = ("dataset", "model", "supervision", "variant", "budget", "seed", "testset")
    lines += ["", "default run, test mIoU per cell:", "", "| " + " | ".join(keys) + " | test mIoU |",
              "|" + "---|" * (len(keys) + 1)]
    lines += ["| " + " | ".join(row.get(k, "") for k in keys) + f" | {float(row['miou_macro']):.3f} |"
              for row in csv.DictReader(cells.open())]
(out / "gpu.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
if [ -n "${TESTS_FAILED:-}" ]; then echo "gpu_check: tests failed (see $OUT/tests.log)" >&2; fi
if [ -n "${PIPELINE_FAILED:-}" ]; then echo "gpu_check: the default pipeline failed (see $OUT/pipeline.log)" >&2; fi
if [ -n "${TESTS_FAILED:-}${PIPELINE_FAILED:-}" ]; then exit 1; fi
