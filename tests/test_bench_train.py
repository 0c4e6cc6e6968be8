"""bench/bench_train.py's summary of a speed-up over interleaved rounds (issue 19's 2.5x verdict rests on it)."""

from __future__ import annotations

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
