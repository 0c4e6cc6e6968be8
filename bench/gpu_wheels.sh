#!/usr/bin/env bash
# The wheels a device machine lacks for `bench/gpu_check.sh --bench` (its CUDA tests and bench_train.py), downloaded
# here into .whl/ (ignored by git; name it in the device call's `carry`). The device image (CUDA, Python 3.12,
# torch, numpy, pytest, pyyaml, tqdm, psutil ...; /work/.library/device/KINDS.md) lacks only pydantic and its three
# helpers on that path: training, the models, the losses and the bench import no raster, vector or slide library
# (tests/test_architecture.py). About 3 MB. Then, in one device call, with carry [".whl"]:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
#   PYTHONPATH=/tmp/site:src PYTHON=python3 bash bench/gpu_check.sh --bench
# (gpu_check.sh writes to $OUT, which the device tool brings back.) The versions are the ones this project's
# environment resolved; pip must download them for the device's Python, not this machine's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
rm -rf .whl && mkdir -p .whl
for pkg in "pydantic==$($PY -c 'import pydantic; print(pydantic.VERSION)')" \
           "pydantic-core==$($PY -c 'import pydantic_core; print(pydantic_core.__version__)')" \
           "annotated-types==$($PY -c 'from importlib.metadata import version; print(version("annotated-types"))')" \
           "typing-inspection==$($PY -c 'from importlib.metadata import version; print(version("typing-inspection"))')"; do
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$pkg"
done
ls -l .whl
du -sh .whl
