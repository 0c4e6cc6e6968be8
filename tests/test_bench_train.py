"""bench/bench_train.py's summary of a speed-up over interleaved rounds (issue 19's 2.5x verdict rests on it), and
bench/gpu_check.sh run whole on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_train import machine, paired_speedups  # noqa: E402


def test_speed_up_is_paired_by_round_and_summarised_by_numpys_quartiles():
    reference = [400.0, 300.0, 500.0, 350.0, 450.0, 420.0, 380.0]
    times = [160.0, 150.0, 180.0, 170.0, 140.0, 200.0, 155.0]
    ratios = np.array(reference) / np.array(times)
    got = paired_speedups(reference, times)
    assert got["median"] == pytest.approx(np.median(ratios))
    assert got["q1"] == pytest.approx(np.percentile(ratios, 25))  # numpy's linear = statistics' inclusive
    assert got["q3"] == pytest.approx(np.percentile(ratios, 75))
    # paired: the ratio of medians (what an unpaired summary gives) is another number here
    assert got["median"] != pytest.approx(np.median(reference) / np.median(times))


def test_one_round_and_unequal_rounds():
    assert paired_speedups([300.0], [100.0]) == {"median": 3.0, "q1": 3.0, "q3": 3.0}
    with pytest.raises(ValueError):
        paired_speedups([300.0, 200.0], [100.0])


def test_machine_names_the_cpu_model_and_its_bf16_units():
    host = machine()
    assert set(host) == {"cpu", "cpu_capability", "avx512_bf16", "amx"}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = {line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")}
        assert host["cpu"] in names


def test_gpu_check_script_runs_end_to_end_on_a_cpu(tmp_path):
    """bench/gpu_check.sh, the one script a lent GPU gets (issue 19, point 7), run whole on the CPU: the tests, a
    one-round bench, the pipeline in a scratch copy of the repository (a Snakemake dry run of the smoke
    configuration here) and the summary. Its first GPU run must not be where a shell slip shows: copying the
    tracked files once failed on the `profiles` link, which `--quick` never reached."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path / "out"), "TMPDIR": str(tmp_path), "PYTHON": sys.executable,
           "REPEATS": "1", "MODELS": "unet",
           "SNAKEMAKE_ARGS": "--configfile tests/smoke/params.yaml --dry-run",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", str(root / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = tmp_path / "out"
    summary = (out / "gpu.md").read_text()
    assert "host CPU:" in summary and "| unet | bf16 |" in summary and "default pipeline:" in summary, summary
    assert "passed" in summary.split("tests:")[1].splitlines()[0]
    assert "dry-run" in (out / "pipeline.log").read_text().lower()
    assert {r["case"] for r in json.loads((out / "train.json").read_text())["rows"]} >= {"reference fp32", "bf16"}


def test_gpu_check_refuses_an_unknown_option_before_doing_anything(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(root / "bench" / "gpu_check.sh"), "--benchh"], capture_output=True, text=True,
                          env={**os.environ, "OUT": str(out)}, timeout=60)
    assert proc.returncode == 2 and "unknown option --benchh" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("git", [True, False], ids=["git-checkout", "no-git-copy"])
def test_copy_tree_copies_what_a_pipeline_needs_and_no_outputs(tmp_path, git):
    """bench/copy_tree.sh, gpu_check's scratch copy: in a git checkout the tracked files, the `profiles` link kept a
    link; without .git (GIT_DIR pointing nowhere makes every git command fail, as in a device machine's copy of
    the working tree) the same files by tar, leaving out what .gitignore names (.venv, results, ...)."""
    root = Path(__file__).resolve().parents[1]
    dest = tmp_path / "copy"
    dest.mkdir()
    env = {**os.environ} if git else {**os.environ, "GIT_DIR": str(tmp_path / "no-git")}
    subprocess.run(["bash", str(root / "bench" / "copy_tree.sh"), str(dest)], env=env, check=True, timeout=120)
    assert (dest / "profiles").is_symlink() and (dest / "profiles" / "slurm").is_dir()
    for needed in ("Snakefile", "params.yaml", "tests/smoke/params.yaml", "data/cpm15/images/image01.png",
                   "src/eqseg/cli.py", "workflow/stages.py"):
        assert (dest / needed).is_file(), needed
    for output in (".git", ".venv", "results", "mlflow.db"):
        assert not (dest / output).exists(), output
