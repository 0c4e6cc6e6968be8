"""Print the table of docs/errors.md ("Every bad input tried, and what it prints") by running the real `eqseg`.

    python docs/errors_table.py            # the markdown rows, on stdout
    python docs/errors_table.py --jobs 1   # one eqseg at a time (default 2)

The inputs are those of tests/test_errors.py, reused rather than copied: every case of CASES runs in the workspace
the test builds (`make_workspace`), and the tile-level tests listed in TILE_TESTS are called as they are, with an
`eqseg_cli` that runs the real command and records what it printed. Paths in the printed lines are made relative
to the folder the command ran in (and to the repository, for its bundled data). Anything unexpected (not one line,
not the exit status the test wants, a test assertion failing, a changed workspace) is said on stderr and makes the
exit status 1; the rows are printed all the same.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_errors as te  # noqa: E402
from conftest import BIN, tool_env  # noqa: E402

# Short human descriptions of the bad input of each case of CASES; a case missing here is described by its name.
DESCRIPTIONS = {
    "check-missing-params": "params file does not exist",
    "check-broken-yaml": "params file is not valid YAML",
    "check-unknown-weak-option": "unknown key under `weak.options`",
    "tile-missing-params": "params file does not exist",
    "tile-unknown-dataset": "dataset not in params",
    "tile-foreign-out": "`--out` names a folder of the user's own files",
    "tile-usage": "missing argument",
    "tile-unknown-option": "unknown option",
    "weak-unknown-dataset": "dataset not in params",
    "weak-missing-tiles": "`--tiles` folder does not exist",
    "weak-unknown-supervision": "unknown supervision",
    "weak-foreign-out": "`--out` names a folder of the user's own files",
    "weak-for-a-distilled-student": "`+distill` supervision (its labels come from `eqseg distill`)",
    "train-missing-params": "params file does not exist",
    "train-unknown-dataset": "dataset not in params",
    "train-foreign-out": "`--out` names a folder of the user's own files",
    "train-unknown-model": "model not in params",
    "train-missing-tiles": "`--tiles` folder does not exist",
    "train-usage": "missing `--out`",
    "train-distill-without-pseudo-labels": "`+distill` student before its pseudo-labels exist",
    "distill-missing-teacher": "`--model-dir` holds no trained teacher",
    "distill-foreign-out": "`--out` names a folder of the user's own files",
    "distill-usage": "missing required options",
    "evaluate-missing-model": "`--model-dir` has no model.pt",
    "evaluate-missing-tiles": "`--tiles` folder does not exist",
    "evaluate-3-band-model-on-1-band-tiles": "3-band model on 1-band tiles",
    "evaluate-foreign-out": "`--out` names a folder of the user's own files",
    "predict-missing-model": "`--model-dir` has no model.pt",
    "predict-no-source": "neither `--dataset/--source` nor `--raster`",
    "predict-over-its-input": "`--out` is the `--raster` input",
    "predict-out-is-a-folder": "`--out` names a folder",
    "predict-metrics-is-a-folder": "`--metrics` names a folder",
    "predict-default-metrics-is-a-folder": "a folder where the metrics file (`--out` with .json) would go",
    "predict-dataset-unknown-dataset": "dataset not in params",
    "predict-dataset-missing-model": "`--model-dir` has no model.pt",
    "predict-dataset-foreign-out": "`--out` names a folder of the user's own files",
    "compare-foreign-out": "`--out` names a folder of the user's own files",
    "report-missing-metrics": "a grid cell was not evaluated",
    "report-missing-params": "params file does not exist",
    "report-foreign-out": "`--out` names a folder of the user's own files",
    "make-slide-missing-images": "`--images` folder does not exist",
    "make-slides-unknown-group": "slides group not in params",
    "make-slides-foreign-out": "`--out` names a folder of the user's own files",
    "make-slides-escaping-slide-name": "a slide name of the group that leaves `--out` (`../escaped`)",
    "digits-missing-params": "params file does not exist",
    "digits-bad-model": "`--model` not cnn/p4cnn",
    "digits-foreign-out": "`--out` names a folder of the user's own files",
    "tracking-init-missing-params": "params file does not exist",
}

# Tile-level tests of tests/test_errors.py whose inputs become rows: (description, test, exit status it expects).
# test_missing_params_file is left out: CASES["tile-missing-params"] is the same input.
TILE_TESTS = [
    ("raster file does not exist", te.test_missing_raster, 2),
    ("corrupt TIFF", te.test_corrupt_tiff, 2),
    ("truncated GeoTIFF", te.test_truncated_tiff, 2),
    ("labels without a CRS (shapefile without .prj)", te.test_labels_without_crs, 2),
    ("labels far from the raster", te.test_labels_outside_raster, 2),
    ("`class_field` not in the label file", te.test_unknown_class_field, 2),
    ("label file without features", te.test_empty_label_file, 2),
    ("PNG renamed .tif", te.test_png_renamed_tif, 2),
    ("self-intersecting polygon (repaired, exit 0)", te.test_self_intersecting_polygon_is_repaired_and_said_once, 0),
    ("truncated OME-TIFF slide", te.test_truncated_ome_tiff_is_one_line, 2),
]


def describe(case: str) -> str:
    if case in DESCRIPTIONS:
        return DESCRIPTIONS[case]
    print(f"errors_table: no description for case {case!r} (add it to DESCRIPTIONS)", file=sys.stderr)
    command = te.CASES[case][0][0]
    return case.removeprefix(command + "-").replace("-", " ")


def invalid_params_cases() -> list[tuple[str, str, object, list[str]]]:
    """The parameter sets of test_invalid_params_name_the_key, read from its parametrize mark."""
    [mark] = [m for m in te.test_invalid_params_name_the_key.pytestmark if m.name == "parametrize"]
    return list(mark.args[1])


def by_command(cases: dict) -> list[str]:
    """The case names, those of one command together, commands in the order they first appear."""
    commands = list(dict.fromkeys(args[0] for args, _ in cases.values()))
    return sorted(cases, key=lambda case: commands.index(cases[case][0][0]))


def eqseg(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "eqseg"), *args], cwd=cwd, env=tool_env(), capture_output=True, text=True,
                          timeout=600)


def shown(proc: subprocess.CompletedProcess, cwd: Path) -> tuple[str, int]:
    """The line to show (the error, or the warning of a run that succeeded) with paths made relative; and how
    many lines stderr had."""
    text = proc.stderr
    for base in (cwd.resolve(), cwd, ROOT):
        text = text.replace(f"{base}/", "")
    lines = [re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", "", line) for line in text.strip().splitlines()]
    if proc.returncode == 0:  # a run that succeeds: its warnings (without the log time stamp)
        lines = [line for line in lines if "WARNING" in line]
    return " ⏎ ".join(lines), len(lines)


def row(description: str, command: str, status: int, line: str) -> str:
    code = line.replace("|", "\\|")
    code = f"`` {code} ``" if "`" in code else f"`{code}`"
    return f"| {description} | `{command}` | {status} | {code} |"


def run_case(case: str, ws: Path) -> tuple[str, list[str]]:
    args, needles = te.CASES[case]
    proc = eqseg(args, ws)
    line, n = shown(proc, ws)
    problems = [f"{case}: exit {proc.returncode}, not 2"] if proc.returncode != 2 else []
    problems += [f"{case}: {n} lines on stderr"] if n != 1 else []
    problems += [f"{case}: {needle!r} not in the line" for needle in needles if needle not in line]
    return row(describe(case), args[0], proc.returncode, line), problems


def run_tile_test(description: str, test, status: int, *params) -> tuple[str, list[str]]:
    calls: list[tuple[list[str], Path, subprocess.CompletedProcess]] = []

    def eqseg_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
        calls.append((args, cwd, eqseg(args, cwd)))
        return calls[-1][2]

    name = test.__name__ + (f"[{params[0]}.{params[1]}]" if params else "")
    with tempfile.TemporaryDirectory(prefix="errors_table.") as tmp:
        tmp_path = Path(tmp)
        kwargs = {"root": ROOT} if "root" in test.__code__.co_varnames[: test.__code__.co_argcount] else {}
        problems = []
        try:
            test(eqseg_cli, tmp_path, *params, **kwargs)
        except AssertionError as exc:
            problems.append(f"{name}: its test fails: {str(exc).splitlines()[0] if str(exc) else 'assertion'}")
        args, cwd, proc = calls[-1]
        line, n = shown(proc, cwd)
    problems += [f"{name}: exit {proc.returncode}, not {status}"] if proc.returncode != status else []
    problems += [f"{name}: {n} lines shown"] if n != 1 else []
    return row(description, args[0], proc.returncode, line), problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="how many eqseg commands run at once (default 2)")
    jobs = parser.parse_args().jobs
    tasks = []
    with tempfile.TemporaryDirectory(prefix="errors_table.ws.") as tmp:
        ws = te.make_workspace(Path(tmp))
        before = te.snapshot(ws)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            tasks += [pool.submit(run_case, case, ws) for case in by_command(te.CASES)]
            tasks += [pool.submit(run_tile_test, d, t, s) for d, t, s in TILE_TESTS[:-1]]
            for section, key, value, needles in invalid_params_cases():
                description = f"params `{section}.{key}: {value}`"
                tasks.append(pool.submit(run_tile_test, description, te.test_invalid_params_name_the_key, 2,
                                         section, key, value, needles))
            tasks.append(pool.submit(run_tile_test, *TILE_TESTS[-1]))
            results = [task.result() for task in tasks]
        changed = te.snapshot(ws) != before
    print("| bad input | command | exit | what it prints (stderr) |")
    print("|---|---|---|---|")
    problems = ["the workspace changed"] if changed else []
    for line, found in results:
        print(line)
        problems += found
    for problem in problems:
        print(f"errors_table: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
