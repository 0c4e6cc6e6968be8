"""End to end: the real Snakemake, DVC and MLflow on the smoke configuration, in throw-away copies of the repo.

One Snakemake run and one DVC run (module fixtures) serve every assertion; the later tests build on the earlier
ones (a train-param experiment, push/pull, changed data), so they run in file order.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, copy_repo, run, tool_env
from eqseg import paths

SMOKE = "tests/smoke/params.yaml"
# the smoke grid: 2 datasets x 2 models, full labels, d4 augmentation, a 50 % label budget, seed 0; the
# cpm15_slides models are also scored on cpm15 (grid.test_on)
CELLS = [(d, m, "full", 0) for d in ("cpm15_slides", "spacenet_atlanta") for m in ("unet", "p4m_unet")]
EXTERNAL = [("cpm15_slides", m, "full", 0, "cpm15") for m in ("unet", "p4m_unet")]


def cell(d: str, m: str, s: str, seed: int) -> str:
    return paths.CELL.format(dataset=d, model=m, supervision=s, variant="d4", budget=50, seed=seed)


def model_dir(d, m, s, seed) -> str:
    return f"results/models/{cell(d, m, s, seed)}"


def eval_file(d, m, s, seed, testset: str | None = None) -> str:
    return f"results/eval/{cell(d, m, s, seed)}/{testset or d}/metrics.json"


def stage(kind: str, d, m, s, seed) -> str:
    return f"{kind}@{d}-{m}-{s}-d4-50-{seed}"
PIPELINE_TIMEOUT = 1800  # a whole smoke run: about 2 min on 2 idle cores, much longer when they are shared

# Written into a folder put on PYTHONPATH: every `eqseg` process of the DVC run records the eqseg modules it
# imported, so the test can compare them with the code deps of its stage.
IMPORT_TRACE = '''
import atexit, json, os, sys

def _record():
    out = os.environ.get("EQSEG_IMPORT_TRACE")
    if out and len(sys.argv) > 1 and os.path.basename(sys.argv[0]) == "eqseg":
        mods = sorted(m for m in list(sys.modules) if m == "eqseg" or m.startswith("eqseg."))
        with open(os.path.join(out, f"{os.getpid()}.json"), "w") as f:
            json.dump({"argv": sys.argv, "modules": mods}, f)

atexit.register(_record)
'''


MANIFEST = ".eqseg-output.json"  # what eqseg wrote into a folder (with a time stamp): in .dvcignore, never pulled


def outputs(repo: Path, skip: set[str] = frozenset()) -> set[str]:
    """Every file the pipeline produced, minus orchestrator bookkeeping."""
    skip = {".snakemake_timestamp", ".gitignore", *skip}
    return {
        str(p.relative_to(repo))
        for sub in ("tiles", "weak", "models", "eval", "predict", "digits", "report")
        for p in (repo / "results" / sub).rglob("*")
        if p.is_file() and p.name not in skip
    }


def set_epochs(params: Path, epochs: int) -> None:
    p = yaml.safe_load(params.read_text())
    p["train"]["epochs"] = epochs
    params.write_text(yaml.safe_dump(p, sort_keys=False))


def job_counts(log: str) -> dict[str, int]:
    if "Job stats:" not in log:
        return {}
    table = log.split("Job stats:")[1].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def stages_run(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


def metric_files(repo: Path) -> dict[str, bytes]:
    files = [eval_file(*c) for c in CELLS] + [eval_file(*c) for c in EXTERNAL]
    files += ["results/report/report.md", "results/report/miou.png", "results/digits/cnn/seed0/metrics.json"]
    files += [f"{model_dir(*c)}/history.csv" for c in CELLS]
    return {f: (repo / f).read_bytes() for f in files}


def strict_json(path: Path):
    """json.loads as strict parsers read it: NaN, Infinity and -Infinity are errors."""
    def refuse(name):
        raise AssertionError(f"{path}: {name} in JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def one_class_floor(repo: Path, dataset: str) -> float:
    """The test mIoU of a model that predicts one class everywhere, the best such class: its IoU is its share of
    the counted test pixels (valid, owned, labelled), every other class scores 0. From the tile store's arrays."""
    import pandas as pd

    tiles = repo / "results/tiles" / dataset
    index = pd.read_parquet(tiles / "index.parquet", columns=["tile_id", "split"])
    ids = index.tile_id[index.split == "test"].to_numpy()
    masks = np.load(tiles / "masks.npy", mmap_mode="r")[ids]
    counted = np.load(tiles / "owned.npy", mmap_mode="r")[ids] & np.load(tiles / "valid.npy", mmap_mode="r")[ids]
    classes = json.loads((tiles / "meta.json").read_text())["classes"]
    counts = np.bincount(masks[counted & (masks != 255)], minlength=len(classes))
    return float(counts.max() / counts.sum() / len(classes))


def change_bytes(path: Path) -> None:
    """Change a data file's content but keep it readable: a JSON file re-indented, an image with a byte appended."""
    if path.suffix in (".json", ".geojson"):
        path.write_text(json.dumps(json.loads(path.read_text()), indent=1))
    else:
        path.write_bytes(path.read_bytes() + b"\0")


@pytest.fixture(scope="module")
def snake_repo(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("snake"))
    run(["snakemake", "--cores", "2", "--configfile", SMOKE], cwd=repo, timeout=PIPELINE_TIMEOUT)
    return repo


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory) -> Path:
    """A git + DVC copy on the smoke params, reproduced and committed (the baseline of the experiment below);
    every eqseg process of the run records its imports in `.import-trace/` (outside the copy)."""
    tmp = tmp_path_factory.mktemp("dvc")
    repo = copy_repo(tmp / "repo")
    trace, hook = tmp / "import-trace", tmp / "hook"
    trace.mkdir()
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(IMPORT_TRACE)
    (repo / "params.yaml").write_text((repo / SMOKE).read_text())
    run(["git", "init", "-q"], cwd=repo)
    run(["dvc", "init", "-q"], cwd=repo)
    run(["git", "add", "-A"], cwd=repo)
    run(["git", "commit", "-qm", "smoke pipeline"], cwd=repo)
    env = tool_env()
    env |= {"PYTHONPATH": os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")])), "EQSEG_IMPORT_TRACE": str(trace)}
    proc = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=PIPELINE_TIMEOUT)
    assert proc.returncode == 0, f"dvc repro failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    run(["git", "add", "-A"], cwd=repo)
    run(["git", "commit", "-qm", "baseline results"], cwd=repo)
    return repo


# --- without running a pipeline -----------------------------------------------------------------------------


@pytest.mark.parametrize("params_file", ["params.yaml", SMOKE])
def test_dvc_set_param_rewrite_keeps_the_params_file_valid(params_file, tmp_path):
    """`dvc exp run -S` rewrites params.yaml through ruamel (dropping quotes and flow style of lists); what it
    writes must still load, to the same values plus the override."""
    from dvc.utils.hydra import apply_overrides

    from eqseg.config import load_params

    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / params_file, path)
    before = yaml.safe_load(path.read_text())
    apply_overrides(str(path), ["train.lr=0.0005", "train.epochs=3"])
    after = yaml.safe_load(path.read_text())
    before["train"].update(lr=0.0005, epochs=3)
    assert after == before
    assert load_params(path).train.lr == 0.0005


def test_snakemake_rules_quote_every_placeholder_and_capture_both_streams():
    rules = sorted((ROOT / "workflow/rules").glob("*.smk"))
    shells = []
    for rule_file in rules:
        for block in re.findall(r"shell:\n((?:\s+\".*\"\n?)+)", rule_file.read_text()):
            shells.append("".join(re.findall(r"\"(.*)\"", block)))
    assert len(shells) >= 8, shells  # slides, tile, weak, train, evaluate, predict, digits, report, ...
    for cmd in shells:
        fields = re.findall(r"\{([^{}]+)\}", cmd)
        assert fields and all(f.endswith(":q") for f in fields), cmd
        assert cmd.endswith("> {log:q} 2>&1"), cmd


SHIPPED_PARAMS = ["params.yaml", SMOKE, *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*.yaml"))]


@pytest.mark.parametrize("params_file", SHIPPED_PARAMS)
def test_dvc_resolves_every_stage_of_the_shipped_params(params_file, tmp_path):
    """Every key dvc.yaml interpolates (grid axes, test_on, distill, compare, slides) is in the file DVC reads, and
    every parameter a resolved stage depends on is there too (DVC refuses to run a stage whose parameter is
    missing, only when it reaches that stage: CI once failed an hour in on train.precision)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    repo = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((ROOT / params_file).read_text())
    # one seed and one budget: every kind of stage, model, dataset and supervision still resolves (no parameter
    # name depends on a seed or a budget), in a fraction of the time (the study's grid is ~1,000 stages)
    params["grid"].update(seeds=params["grid"]["seeds"][:1], budgets=params["grid"]["budgets"][:1])
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "init", "-q", "--no-scm"], cwd=repo)
    missing = {}
    with Repo(str(repo)) as dvc:
        stages = list(dvc.index.stages)
        for st in stages:
            for dep in st.deps:
                if isinstance(dep, ParamsDependency):
                    absent = [key for key in dep.params if not has_key(params, key)]
                    if absent:
                        missing[st.addressing.rsplit(":", 1)[-1].split("@")[0]] = absent
    names = {st.addressing.rsplit(":", 1)[-1].split("@")[0] for st in stages}
    assert {"tile", "weak", "train", "evaluate", "predict", "report"} <= names
    assert not missing, f"{params_file} lacks parameters that dvc.yaml stages depend on: {missing}"


def has_key(tree: dict, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def test_both_orchestrators_plan_teacher_pseudo_labels_and_student_for_grid_distill(tmp_path):
    """With grid.distill, Snakemake's plan and DVC's stages hold the same pseudo-label and student outputs, and the
    student's inputs are its teacher's pseudo-labels (a dry run and `dvc stage list`: nothing is trained)."""
    repo = copy_repo(tmp_path / "repo")
    p = yaml.safe_load((repo / SMOKE).read_text())
    p["grid"].update(supervision=["full", "points"], distill=["points"])
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    plan = run(["snakemake", "-n", "--cores", "2", "--configfile", "params.yaml"], cwd=repo).stdout
    assert job_counts(plan)["distill"] == 4
    def folders(paths):  # the cell folder of every distill-related output (results/<kind>/CELL[/testset])
        depth = {"pseudo": 8, "models": 8, "eval": 9, "predict": 9}
        return {"/".join(p.split("/")[:depth[p.split("/")[1]]]) for p in paths
                if p.split("/")[1] in depth and ("pseudo" in p or "+distill" in p)}

    planned = folders(o.rstrip(",") for o in re.findall(r"output: (results/\S+(?:, results/\S+)*)", plan)
                      for o in o.split(", "))
    run(["dvc", "init", "-q", "--no-scm"], cwd=repo)
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:  # the stages DVC resolves from dvc.yaml's matrices and params.yaml
        stages = {st.addressing.rsplit(":", 1)[-1]: {o.def_path for o in st.outs} for st in dvc.index.stages}
    dvc_outs = folders(o for outs in stages.values() for o in outs)
    assert planned == dvc_outs and len(planned) == 4 + 4 + 4 * 2 + 2 * 2  # pseudo, students, their evals, predicts
    assert len([n for n in stages if n.startswith("distill@")]) == 4
    assert len([n for n in stages if n.startswith("train_distill@")]) == 4
    student = next(b for b in plan.split("\n\n") if "output: results/models/spacenet_atlanta/unet/points+distill/" in b)
    assert "results/pseudo/spacenet_atlanta/unet/points/d4/b50/seed0" in student


# --- Snakemake ----------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_snakemake_runs_the_chain(snake_repo):
    for d, m, s, seed in CELLS:
        folder = snake_repo / eval_file(d, m, s, seed)
        metrics = json.loads(folder.read_text())
        assert {"miou_macro", "fwiou", "pixel_accuracy", "iou_background", "ap_macro", "tta_miou_macro"} <= set(metrics)
        # the recorded scores are those of the confusion matrix written beside them
        cm = np.loadtxt(folder.parent / "confusion.csv", delimiter=",")
        ious = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
        assert metrics["miou_macro"] == pytest.approx(float(np.nanmean(ious)), abs=1e-12)
        if m == "unet" and d == "cpm15_slides":  # the U-Net learned the nucleus class (not all background)
            assert cm[:, 1].sum() > 0 and metrics["iou_nucleus"] > 0.15, metrics  # 0.27 measured (2 epochs)
        # equivariance error over D4 on test tiles: rounding only for the group-conv model, large for the U-Net
        assert (metrics["equivariance_error_max"] < 1e-4) == (m == "p4m_unet"), (m, metrics["equivariance_error_max"])
        assert (snake_repo / model_dir(d, m, s, seed) / "model.pt").is_file()
    for c in EXTERNAL:
        assert json.loads((snake_repo / eval_file(*c)).read_text())["n_test_tiles"] > 0
    # no NaN or Infinity in any JSON the run wrote (metrics, compare, report, configs, manifests)
    written = [p for p in (snake_repo / "results").rglob("*.json")]
    assert len(written) > 40 and (snake_repo / "results/compare/cpm15_slides/unet_vs_p4m/compare.json") in written
    for path in written:
        strict_json(path)
    report = (snake_repo / "results/report/report.md").read_text()
    assert "| cpm15_slides | cpm15 |" in report and "## Per test set" in report and (snake_repo / "results/compare/cpm15_slides/unet_vs_p4m/cka.csv").is_file()
    again = run(["snakemake", "--cores", "2", "--configfile", SMOKE, "-n"], cwd=snake_repo)
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.e2e
def test_the_smoke_pathology_cells_learn_more_than_one_class(snake_repo):
    """The smoke configuration trains models that learned something: each cpm15_slides cell's test mIoU is above
    that of predicting the best single class everywhere (a 2-epoch p4m_unet with one regular field once scored
    0.065, all nucleus). The SpaceNet cells are not held to it: one panchromatic 900 x 900 clip, 4 % building
    pixels, 64-px tiles; no smoke-sized setting tried (up to 8 epochs, 128-px tiles, CE + Lovasz, lr 1e-3 to 1e-2,
    widths 8 to 32) lifted them off all-background on the val tiles, and the default run's 0.52-0.58 is close to its
    0.47 floor too."""
    cells = [c for c in CELLS if c[0] == "cpm15_slides"]
    assert cells
    for d, m, s, seed in cells:
        floor = one_class_floor(snake_repo, d)
        score = json.loads((snake_repo / eval_file(d, m, s, seed)).read_text())["miou_macro"]
        assert score > floor + 0.05, (d, m, score, floor)


@pytest.mark.e2e
def test_snakemake_logs_hold_each_jobs_output(snake_repo):
    logs = sorted((snake_repo / "results/logs").rglob("*.log"))
    assert len(logs) == 26  # 1 slides, 3 tile, 2 weak, 4 train, 6 evaluate, 6 predict, 2 digits, 1 compare, 1 report
    empty = [str(p.relative_to(snake_repo)) for p in logs if not p.read_text().strip()]
    assert not empty, empty
    train_log = (snake_repo / f"results/logs/train/{cell('spacenet_atlanta', 'unet', 'full', 0)}.log").read_text()
    assert "best val mIoU" in train_log  # the command's stdout, not only its log messages


@pytest.mark.e2e
def test_snakemake_refuses_names_outside_the_wildcard_constraints(snake_repo):
    # without the constraints, Snakemake would schedule (and with unquoted shell commands run) each of these
    from concurrent.futures import ThreadPoolExecutor

    targets = ("results/weak/cpm15_slides/full;touch INJECTED", "results/weak/cpm15_slides/.hidden",
               "results/models/cpm15_slides/unet/full/d4/b50/seedx", "results/models/cpm15_slides/unet/full/rot/b50/seed0")
    dry_run = lambda target: run(["snakemake", "--cores", "1", "--configfile", SMOKE, "-n", target],  # noqa: E731
                                 cwd=snake_repo, check=False)
    with ThreadPoolExecutor(2) as pool:  # dry runs only (each parses the workflow: ~10 s), two at a time
        procs = list(pool.map(dry_run, targets))
    for target, proc in zip(targets, procs):
        assert proc.returncode != 0, target
        assert "MissingRuleException" in proc.stdout + proc.stderr or "No rule to produce" in proc.stdout + proc.stderr
    assert not (snake_repo / "INJECTED").exists()


@pytest.mark.e2e
def test_snakemake_report_shows_the_studys_outputs_with_captions(snake_repo, tmp_path):
    """`snakemake --report` after the run: one HTML page with every output the rules mark with report(), in its
    category, with captions rendered from workflow/report/*.rst (the wildcards filled in, no reST errors)."""
    html_file = tmp_path / "report.html"
    proc = run(["snakemake", "--report", str(html_file), "--configfile", SMOKE], cwd=snake_repo)
    assert "(ERROR/" not in proc.stdout + proc.stderr  # a caption docutils could not parse
    html = html_file.read_text()
    assert html_file.stat().st_size > 100_000 and "System Message" not in html
    for name in ("miou.png", "budget.png", "summary.csv", "confusion.png", "predictions.png", "curves.png", "cka.png"):
        assert name in html, name
    results = json.loads(re.search(r"var results = (\{.*?\});\n", html, re.S).group(1))
    categories = json.loads(re.search(r"var categories = (\{.*?\});\n", html, re.S).group(1))
    assert set(categories) == {"Study", "Training", "Evaluation", "Comparison"}
    assert set(categories["Training"]) == {"cpm15_slides", "spacenet_atlanta"}
    assert "cpm15_slides tested on cpm15" in categories["Evaluation"]
    shown = set(results)
    assert {f"{model_dir(*c)}/curves.png" for c in CELLS} <= shown
    assert {eval_file(*c).replace("metrics.json", "confusion.png") for c in CELLS + EXTERNAL} <= shown
    assert {"results/report/miou.png", "results/report/cells.csv", "results/compare/cpm15_slides/unet_vs_p4m/cka.png"} <= shown
    curves = results[f"{model_dir('spacenet_atlanta', 'p4m_unet', 'full', 0)}/curves.png"]
    assert curves["labels"] == {"model": "p4m_unet", "supervision": "full", "variant": "d4", "budget": "50 %", "seed": "0"}
    assert "Training of p4m_unet on spacenet_atlanta" in curves["caption"]
    assert "eqseg: equivariant segmentation" in html  # the global description (workflow/report/workflow.rst)


# --- DVC ----------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_dvc_runs_the_chain_and_declares_metrics_and_plots(dvc_repo):
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], cwd=dvc_repo).stdout)
    values = shown[""]["data"]  # "": the workspace
    for c in CELLS + EXTERNAL:
        assert 0.0 < values[eval_file(*c)]["data"]["miou_macro"] <= 1.0
    status = run(["dvc", "status"], cwd=dvc_repo).stdout
    assert "up to date" in status
    # bytecode that Python writes beside the sources is not a code change (.dvcignore)
    pyc = dvc_repo / "src/eqseg/tiling/__pycache__/store.cpython-311.pyc"
    pyc.parent.mkdir(exist_ok=True)
    pyc.write_bytes(b"not code")
    assert "up to date" in run(["dvc", "status"], cwd=dvc_repo).stdout
    plots = run(["dvc", "plots", "show", "--json"], cwd=dvc_repo).stdout
    assert "confusion.png" in plots and "predictions.png" in plots and "miou.png" in plots
    history = f"{model_dir('spacenet_atlanta', 'unet', 'full', 0)}/history.csv"
    curve = json.loads(run(["dvc", "plots", "show", "--json", history], cwd=dvc_repo).stdout)["data"][history][0]
    assert curve["content"]["encoding"]["x"]["field"] == "epoch"
    epochs = yaml.safe_load((ROOT / SMOKE).read_text())["train"]["epochs"]
    assert len(curve["content"]["data"]["values"]) == epochs and "val_miou" in curve["content"]["data"]["values"][0]
    # metrics, plots and the report are in the cache (results/ is git-ignored, so that is where they are kept)
    lock = yaml.safe_load((dvc_repo / "dvc.lock").read_text())
    hashes = {o["path"]: o["md5"] for s in lock["stages"].values() for o in s.get("outs", [])}
    for path in ("results/report/report.md", "results/report/miou.png", "results/digits/cnn/seed0/metrics.json",
                 eval_file("cpm15_slides", "unet", "full", 0), f"{model_dir('cpm15_slides', 'unet', 'full', 0)}/history.csv"):
        md5 = hashes[path]
        assert (dvc_repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).is_file(), path


@pytest.mark.e2e
def test_dvc_stages_depend_on_the_code_their_commands_import(dvc_repo):
    """Each stage lists every eqseg module its command imported during the real run: the module's file, or the
    package folder holding it (a package reached only through its options leaf is listed as two files)."""
    from dvc.repo import Repo

    traces = [json.loads(p.read_text()) for p in (dvc_repo.parent / "import-trace").glob("*.json")]
    commands = {t["argv"][1] for t in traces}
    assert {"make-slides", "tile", "weak", "train", "evaluate", "predict-dataset", "digits", "report"} <= commands
    with Repo(str(dvc_repo)) as repo:
        declared = {s.addressing: {str(Path(d.def_path)) for d in s.deps} for s in repo.index.stages}
        stage_cmds = {s.addressing: s.cmd for s in repo.index.stages}
    checked, missing = 0, {}
    for t in traces:
        cmd = " ".join(t["argv"][1:])
        stage = next(name for name, c in stage_cmds.items() if c.split(" ", 1)[1] == cmd)
        needed = set()
        for mod in t["modules"]:
            base = Path("src", *mod.split("."))
            needed.add((base / "__init__.py" if (ROOT / base).is_dir() else base.with_suffix(".py")).as_posix())
        uncovered = {f for f in needed if not any(f == d or f.startswith(d + "/") for d in declared[stage])}
        if uncovered:
            missing[stage.rsplit(":", 1)[-1]] = sorted(uncovered)
        checked += 1
    assert not missing, f"dvc.yaml stages import but do not depend on: {missing}"
    assert checked == len(stage_cmds)  # one traced process per stage of the smoke grid


@pytest.mark.e2e
def test_snakemake_and_dvc_produce_the_same_outputs(snake_repo, dvc_repo):
    a, b = outputs(snake_repo), outputs(dvc_repo)
    assert a == b and len(a) > 10


@pytest.mark.e2e
def test_dvc_experiment_with_a_train_param_shows_its_metrics(dvc_repo):
    """`dvc exp run -S` rewrites params.yaml (the result must stay valid), re-runs train and evaluate but not
    tiling, and `dvc exp show` / `dvc metrics diff` show the metric values of the baseline and the experiment."""
    from eqseg.config import load_params

    tiles = dvc_repo / "results/tiles/cpm15_slides/images.npy"
    before = tiles.stat().st_mtime_ns
    baseline = {c: json.loads((dvc_repo / eval_file(*c)).read_text()) for c in CELLS}
    proc = run(["dvc", "exp", "run", "-n", "lr-small", "-S", "train.lr=0.0005", "-S", "train.epochs=1"],
               cwd=dvc_repo, timeout=PIPELINE_TIMEOUT)
    ran = stages_run(proc.stdout + proc.stderr)
    assert {stage("train", *c) for c in CELLS} <= ran
    assert {stage("evaluate", *c) for c in CELLS} <= ran
    assert not any(r.startswith(("slides@", "tile@", "weak@", "digits@")) for r in ran), ran
    assert tiles.stat().st_mtime_ns == before
    assert load_params(dvc_repo / "params.yaml").train.lr == 0.0005

    rows = json.loads(run(["dvc", "exp", "show", "--json"], cwd=dvc_repo).stdout)
    baseline_row = next(r for r in rows if r["rev"] != "workspace")
    exp_row = next(e for e in baseline_row["experiments"] if e["name"] == "lr-small")["revs"][0]
    for row, params_lr in ((baseline_row, 0.003), (exp_row, 0.0005)):
        assert row["data"]["params"]["params.yaml"]["data"]["train"]["lr"] == params_lr
    for c in CELLS:
        path = eval_file(*c)
        now = json.loads((dvc_repo / path).read_text())
        assert baseline_row["data"]["metrics"][path]["data"]["miou_macro"] == baseline[c]["miou_macro"]
        assert exp_row["data"]["metrics"][path]["data"]["miou_macro"] == now["miou_macro"]
    diff = json.loads(run(["dvc", "metrics", "diff", "--all", "--json"], cwd=dvc_repo).stdout)
    path = eval_file("spacenet_atlanta", "unet", "full", 0)
    assert diff[path]["miou_macro"]["old"] == baseline[CELLS[2]]["miou_macro"]
    # the README's recipe: one screen with the headline metrics and the changed params
    env = tool_env() | {"COLUMNS": "160"}
    readme = (ROOT / "README.md").read_text()
    for recipe in ("dvc exp show --only-changed --keep 'mean_miou\\.' --drop 'results/|test_miou\\.'",
                   "dvc metrics diff --targets results/report/metrics.json"):
        assert recipe in readme, recipe
    shown = subprocess.run(["dvc", "exp", "show", "--no-pager", "--only-changed", "--keep", r"mean_miou\.", "--drop",
                            r"results/|test_miou\.", "--md"], cwd=dvc_repo, env=env, capture_output=True, text=True,
                           check=True).stdout
    header = shown.splitlines()[0]
    assert "mean_miou.unet" in header and "mean_miou.p4m_unet" in header and "train.lr" in header, shown
    assert "train.epochs" in header and "miou_macro" not in header and "test_miou." not in header, header
    assert "lr-small" in shown
    table = subprocess.run(["dvc", "exp", "show", "--no-pager", "--only-changed", "--keep", r"mean_miou\.", "--drop",
                            r"results/|test_miou\."], cwd=dvc_repo, env=env, capture_output=True, text=True,
                           check=True).stdout
    assert "mean_miou.p4m_unet" in table and "…" not in table, table  # fits 160 columns
    headline = subprocess.run(["dvc", "metrics", "diff", "--all", "--targets", "results/report/metrics.json"],
                              cwd=dvc_repo, env=env, capture_output=True, text=True, check=True).stdout
    for c in CELLS:
        assert f"test_miou.{c[0]}.{c[1]}_full_d4_b50" in headline, headline
    assert "test_miou.cpm15_slides_on_cpm15.p4m_unet_full_d4_b50" in headline


@pytest.mark.e2e
def test_dvc_push_then_pull_restores_metrics_plots_and_report(dvc_repo, tmp_path):
    before_files, before = outputs(dvc_repo, {MANIFEST}), metric_files(dvc_repo)
    run(["dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")], cwd=dvc_repo)
    run(["dvc", "push"], cwd=dvc_repo, timeout=PIPELINE_TIMEOUT)
    for gone in (".dvc/cache", "results", "data/cpm15_slides"):
        shutil.rmtree(dvc_repo / gone)
    run(["dvc", "pull"], cwd=dvc_repo, timeout=PIPELINE_TIMEOUT)
    assert "up to date" in run(["dvc", "status"], cwd=dvc_repo).stdout
    assert outputs(dvc_repo, {MANIFEST}) == before_files  # every file the stages write is an output of theirs
    assert metric_files(dvc_repo) == before
    shown = run(["dvc", "metrics", "show", "--json"], cwd=dvc_repo).stdout
    assert "miou_macro" in shown


@pytest.mark.e2e
def test_snakemake_reruns_training_not_tiling_after_a_train_param_change(snake_repo):
    tiles = snake_repo / "results/tiles/cpm15_slides/images.npy"
    before = tiles.stat().st_mtime_ns
    epochs = yaml.safe_load((snake_repo / SMOKE).read_text())["train"]["epochs"]
    set_epochs(snake_repo / SMOKE, 1)
    # one cell's scores as the target keeps the test short; every cell's training is out of date the same way
    target = eval_file("spacenet_atlanta", "unet", "full", 0)
    plan = run(["snakemake", "-n", "--cores", "2", "--configfile", SMOKE], cwd=snake_repo)
    counts = job_counts(plan.stdout + plan.stderr)
    assert counts.get("train") == len(CELLS) and counts.get("evaluate") == len(CELLS) + len(EXTERNAL)
    assert "tile" not in counts and "weak" not in counts
    proc = run(["snakemake", target, "--cores", "2", "--configfile", SMOKE], cwd=snake_repo, timeout=PIPELINE_TIMEOUT)
    assert job_counts(proc.stdout + proc.stderr) == {"train": 1, "evaluate": 1, "total": 2}
    assert json.loads((snake_repo / model_dir("spacenet_atlanta", "unet", "full", 0) / "config.json").read_text())["train"]["epochs"] == 1
    # back to the smoke params: that cell trains again, with what follows from it; the rest was never touched
    set_epochs(snake_repo / SMOKE, epochs)
    proc = run(["snakemake", "--cores", "2", "--configfile", SMOKE], cwd=snake_repo, timeout=PIPELINE_TIMEOUT)
    assert job_counts(proc.stdout + proc.stderr) == {"train": 1, "evaluate": 1, "predict": 1, "report": 1, "all": 1,
                                                     "total": 5}
    assert tiles.stat().st_mtime_ns == before


@pytest.mark.e2e
def test_mlflow_holds_every_run_with_params_metrics_and_artifacts(snake_repo):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{snake_repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("eqseg-smoke")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) >= len(CELLS)
    for d, m, s, seed in CELLS:
        run_id = json.loads((snake_repo / model_dir(d, m, s, seed) / "run.json").read_text())["run_id"]
        r = client.get_run(run_id)
        assert r.info.status == "FINISHED"
        assert r.data.tags["dataset"] == d and r.data.tags["model"] == m and r.data.tags["variant"] == "d4"
        assert r.data.tags["git_commit"] == "unknown"  # the test copy is not a git work tree: said, not invented
        recorded = json.loads((snake_repo / eval_file(d, m, s, seed)).read_text())
        assert r.data.metrics["test_miou_macro"] == recorded["miou_macro"]
        if d == "cpm15_slides":  # the external test set's scores under their own names
            external = json.loads((snake_repo / eval_file(d, m, s, seed, "cpm15")).read_text())
            assert r.data.metrics["test_on_cpm15_miou_macro"] == external["miou_macro"]
        epochs = int(r.data.params["train.epochs"])
        assert r.data.params["model"] == m and "n_params" in r.data.params
        assert len(client.get_metric_history(run_id, "val_miou")) == epochs
        assert len(client.get_metric_history(run_id, "train_loss")) == epochs
        assert 0.0 < r.data.metrics["test_miou_macro"] <= 1.0
        names = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "eval")}
        assert {"model.pt", "curves.png", "eval/metrics.json", "eval/confusion.png"} <= names


@pytest.mark.e2e
def test_dvc_and_snakemake_rerun_tiling_when_a_data_file_changes(snake_repo, dvc_repo):
    labels = "data/spacenet_atlanta/geotiff_labels.geojson"
    for repo in (snake_repo, dvc_repo):
        os.utime(repo / labels)  # a new timestamp on the same content (what a checkout does) re-runs nothing
    proc = run(["snakemake", "--cores", "2", "--configfile", SMOKE, "-n"], cwd=snake_repo)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert "up to date" in run(["dvc", "status"], cwd=dvc_repo).stdout

    for repo in (snake_repo, dvc_repo):
        change_bytes(repo / labels)
    status = json.loads(run(["dvc", "status", "--json"], cwd=dvc_repo).stdout)
    assert "tile@spacenet_atlanta" in status and "tile@cpm15_slides" not in status and "slides@cpm15_slides" not in status
    assert {stage("predict", "spacenet_atlanta", m, "full", 0) for m in ("unet", "p4m_unet")} <= set(status)
    proc = run(["snakemake", "--cores", "2", "--configfile", SMOKE, "-n"], cwd=snake_repo)
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts.get("tile") == 1 and "slides" not in counts, counts
    assert counts.get("predict") == 2 and counts.get("train") == 2, counts
    assert f"Updated input files: {labels}" in proc.stdout + proc.stderr

    for repo in (snake_repo, dvc_repo):
        change_bytes(repo / "data/cpm15/images/image03.png")
    status = json.loads(run(["dvc", "status", "--json"], cwd=dvc_repo).stdout)
    assert "slides@cpm15_slides" in status
    proc = run(["snakemake", "--cores", "2", "--configfile", SMOKE, "-n"], cwd=snake_repo)
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts.get("slides") == 1 and counts.get("tile") == 3, counts  # the slides, spacenet (labels) and cpm15 (pairs)
