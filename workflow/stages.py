"""The DVC stages of eqseg, described once: `python workflow/stages.py --write` generates dvc.yaml from them.

A stage is its `eqseg` command, the data and upstream outputs it reads, the params sections it depends on, what it
writes and the loop over the grid (a DVC `foreach` or `matrix`). Paths come from `eqseg.paths`, the patterns the
CLI defaults and the Snakemake rules use. The stages of one trained cell (train, evaluate, predict) come in twins,
written once here: on the cell's own test set or on another dataset's (`_external`, grid.test_on), and for a weak
supervision or for its self-trained student (`_distill`, grid.distill).

Code deps are computed, not listed: the modules the stage's `eqseg` subcommand imports in src/eqseg/cli.py (at the
top of the file, in the command's function and in the cli.py helpers it calls), and everything they import in
turn (imports by name, as in eqseg.models' registry, included), at the granularity the import-trace test of a
real run checks (tests/test_pipeline_e2e.py): a top-level package folder (src/eqseg/tiling) or a
single module (src/eqseg/cli.py). The static import graph (grimp) counts
imports inside functions too, so the deps are a superset of what a run imports.

One exception to whole folders: a domain's params schemas, its options leaf (src/eqseg/models/options.py), which
eqseg.config imports to load params. A stage that reaches a package only through that leaf depends on the leaf and
on the package's __init__.py (Python runs it to import the leaf), not on the package: only the imports at the top
level of a package run with it, not those inside its functions (a package's lazy `__getattr__`), so `eqseg tile`
does not depend on the models it never builds.

No torch here: it imports eqseg.paths, and grimp (the [test] extra) only to compute the code deps.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

from eqseg import paths

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DVC_YAML = ROOT / "dvc.yaml"
DATA = "data/{dataset}"  # a dataset's DVC-tracked files (bundled, or built by the slides stage: paths.SLIDES)
MODEL_FILES = ("model.pt", "config.json", "run.json")  # the files of a trained cell folder besides its plots

HEADER = """\
# GENERATED from workflow/stages.py: do not edit by hand (tests/test_stages.py fails on any difference).
# Regenerate with `python workflow/stages.py --write` after changing a stage there or the imports of src/eqseg.
# eqseg pipeline for DVC: the same `eqseg` commands and output paths as the Snakemake rules (a test checks it).
# The grid comes from params.yaml (DVC matrix); each stage depends only on its own params, so changing a
# training parameter re-runs train and evaluate, not tile. Dataset files are tracked under data/<dataset>/.
# Code deps: the eqseg modules each stage's command imports, computed from the static import graph (a test traces
# the imports of a real run).
# Metrics and plots are cached like every output (results/ is git-ignored), so `dvc push`/`dvc pull` move them and
# `dvc exp show` / `dvc metrics diff` read them from the cache for any commit or experiment.
"""

MODEL_FOLDER_NOTE = (
    "the files of the model folder one by one, so that the training curve is a plot of its own. Every file eqseg",
    "writes must be listed (the push/pull test checks it): DVC removes the listed files before a re-run, and eqseg",
    "replaces a folder only if nothing but its own manifest's files remain (.eqseg-output.json: in .dvcignore).",
)
HISTORY_PLOT = {"x": "epoch", "y": "val_miou", "title": "validation mIoU per epoch"}


@dataclass(frozen=True)
class Stage:
    """One DVC stage. `cmd` is its lines (folded into one command); every path is written with the values of
    `loop` already in (DVC's `${item...}`), so the stage is exactly what dvc.yaml holds, less the code deps."""

    name: str
    cmd: tuple[str, ...]
    deps: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    plots: tuple = ()  # a path, or (path, {x:, y:, title:})
    foreach: str | None = None
    matrix: dict[str, str] | None = None
    comment: str = ""  # after the stage's name
    notes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # comment lines above a section (outs, ...)
    section_comments: dict[str, str] = field(default_factory=dict)  # a comment after a section's key

    @property
    def command(self) -> str:
        """The eqseg subcommand, whose imports are the stage's code."""
        return self.cmd[0].split()[1]


# ---- the grid: one trained cell's placeholders, for each kind of loop

AXES = ("model", "variant", "budget", "seed")


def cell(external: bool = False, student: bool = False, teacher: bool = False) -> tuple[dict[str, str], dict[str, str]]:
    """The matrix of a cell stage and its placeholders: dataset (its training set), testset, supervision, ...

    external: the models of a dataset scored on another (grid.test_on pairs); student: the NAME+distill cell of a
    supervision of grid.distill; teacher: that supervision's own cell (the distill stage)."""
    matrix = {"pair": "${grid.test_on}"} if external else {"dataset": "${grid.datasets}"}
    matrix["model"] = "${grid.models}"
    matrix.update({"parent": "${grid.distill}"} if student or teacher else {"supervision": "${grid.supervision}"})
    matrix.update(variant="${grid.variants}", budget="${grid.budgets}", seed="${grid.seeds}")
    v = {axis: f"${{item.{axis}}}" for axis in AXES}
    v["dataset"], v["testset"] = (("${item.pair.dataset}", "${item.pair.testset}") if external
                                  else ("${item.dataset}", "${item.dataset}"))
    sup = "${item.parent}" if (student or teacher) else "${item.supervision}"
    v["supervision"] = sup + "+distill" if student else sup
    v["model_dir"] = paths.MODEL.format(**v)
    v["tiles"] = paths.TILES.format(dataset=v["dataset"])
    v["test_tiles"] = paths.TILES.format(dataset=v["testset"])
    v["test_data"] = DATA.format(dataset=v["testset"])
    v["weak"] = paths.WEAK.format(dataset=v["dataset"], supervision=sup)
    v["pseudo"] = paths.PSEUDO.format(**{**v, "supervision": sup})
    v["eval"] = paths.EVAL.format(**v)
    v["predict"] = paths.PREDICT.format(**v)
    return matrix, v


def _name(base: str, student: bool, external: bool) -> str:
    return base + ("_distill" if student else "") + ("_external" if external else "")


EXTERNAL_COMMENT = "the models of a dataset on another (grid.test_on)"


def train(student: bool) -> Stage:
    matrix, v = cell(student=student)
    labels = v["pseudo"] if student else v["weak"]
    d = v["model_dir"]
    return Stage(
        _name("train", student, False), matrix=matrix,
        cmd=(f"eqseg train --params params.yaml --dataset {v['dataset']} --model {v['model']}",
             f"--supervision {v['supervision']} --variant {v['variant']} --budget {v['budget']} --seed {v['seed']}",
             f"--tiles {v['tiles']}",
             f"--labels {labels}",
             f"--out {d}"),
        deps=(v["tiles"], labels),
        params=("train", f"models.{v['model']}", "normalise", "mlflow") + (("distill",) if student else ()),
        outs=tuple(f"{d}/{f}" for f in MODEL_FILES),
        plots=((f"{d}/history.csv", HISTORY_PLOT), f"{d}/curves.png"),
        notes={"outs": MODEL_FOLDER_NOTE},
    )


def evaluate(student: bool, external: bool) -> Stage:
    matrix, v = cell(external=external, student=student)
    e = v["eval"]
    files = paths.EVAL_FILES
    return Stage(
        _name("evaluate", student, external), matrix=matrix, comment=EXTERNAL_COMMENT if external else "",
        cmd=("eqseg evaluate --params params.yaml",
             f"--model-dir {v['model_dir']}",
             f"--tiles {v['test_tiles']}",
             f"--out {e}"),
        deps=(v["model_dir"], v["test_tiles"]),
        params=("evaluate", "normalise", "train.precision"),
        outs=tuple(f"{e}/{f}" for f in files if f != "metrics.json" and not f.endswith(".png")),
        metrics=(f"{e}/metrics.json",),
        plots=tuple(f"{e}/{f}" for f in files if f.endswith(".png")),
    )


def predict(student: bool, external: bool) -> Stage:
    matrix, v = cell(external=external, student=student)
    return Stage(
        _name("predict", student, external), matrix=matrix, comment=EXTERNAL_COMMENT if external else "",
        cmd=("eqseg predict-dataset --params params.yaml",
             f"--model-dir {v['model_dir']}",
             f"--dataset {v['testset']} --tiles {v['test_tiles']}",
             f"--out {v['predict']}"),
        deps=(v["model_dir"], v["test_tiles"], v["test_data"]),
        params=("predict", "normalise", "train.precision"),
        outs=(v["predict"],),
    )


def distill() -> Stage:
    matrix, v = cell(teacher=True)
    return Stage(
        "distill", matrix=matrix,
        comment="teacher (the cell of a weak supervision of grid.distill) -> pseudo-labels for its NAME+distill student",
        cmd=("eqseg distill --params params.yaml",
             f"--model-dir {v['model_dir']}",
             f"--tiles {v['tiles']} --labels {v['weak']}",
             f"--out {v['pseudo']}"),
        deps=(v["tiles"], v["weak"], v["model_dir"]),
        params=("distill", "train.max_train_tiles", "train.precision", "normalise"),
        outs=(v["pseudo"],),
    )


def stages() -> list[Stage]:
    """Every stage, in dvc.yaml's order. A new stage: a Stage(...) here (a function of the cell's placeholders if it
    runs per trained cell), then `python workflow/stages.py --write`."""
    slides = paths.SLIDES.format(group="${key}")
    tiles = paths.TILES.format(dataset="${key}")
    weak_matrix = {"dataset": "${grid.datasets}", "supervision": "${grid.supervision}"}
    weak = paths.WEAK.format(dataset="${item.dataset}", supervision="${item.supervision}")
    digits = paths.DIGITS.format(model="${item.model}", seed="${item.seed}")
    compare = paths.COMPARE.format(dataset="${item.dataset}", name="${item.name}")
    report = [f"{paths.REPORT}/{f}" for f in paths.REPORT_FILES]
    return [
        Stage("slides", foreach="${slides}",
              cmd=(f"eqseg make-slides ${{key}} --params params.yaml --out {slides}",),
              deps=("${item.images}", "${item.masks}"), params=("slides.${key}",), outs=(slides,)),
        Stage("tile", foreach="${datasets}", comment="every defined dataset: the grid's, and the test sets of grid.test_on",
              cmd=(f"eqseg tile ${{key}} --params params.yaml --out {tiles}",),
              deps=(DATA.format(dataset="${key}"),), params=("datasets.${key}", "tile"), outs=(tiles,)),
        Stage("weak", matrix=weak_matrix,
              cmd=("eqseg weak ${item.dataset} ${item.supervision} --params params.yaml "
                   f"--tiles {paths.TILES.format(dataset='${item.dataset}')}",
                   f"--out {weak}"),
              deps=(paths.TILES.format(dataset="${item.dataset}"),), params=("weak",), outs=(weak,)),
        train(student=False),
        evaluate(student=False, external=False),
        predict(student=False, external=False),
        evaluate(student=False, external=True),
        predict(student=False, external=True),
        # self-training (grid.distill): the same stages for the NAME+distill students
        distill(),
        train(student=True),
        evaluate(student=True, external=False),
        predict(student=True, external=False),
        evaluate(student=True, external=True),
        predict(student=True, external=True),
        Stage("digits", matrix={"model": "${digits.models}", "seed": "${digits.seeds}"},
              cmd=(f"eqseg digits --params params.yaml --model ${{item.model}} --seed ${{item.seed}} --out {digits}",),
              deps=("data/mnist5k",), params=("digits.epochs", "digits.n_train", "digits.threads", "digits.device"),
              metrics=(f"{digits}/metrics.json",)),
        Stage("report", cmd=(f"eqseg report --params params.yaml --out {paths.REPORT}",),
              deps=("results/eval", "results/models", "results/digits"),
              params=("grid", "digits.models", "digits.seeds"),
              metrics=tuple(f for f in report if f.endswith("/metrics.json")),
              outs=tuple(f for f in report if not f.endswith((".png", "/metrics.json"))),
              plots=tuple(f for f in report if f.endswith(".png")),
              section_comments={"metrics": "the headline: test mIoU per test set and cell (`dvc exp show`, `dvc metrics diff`)"}),
        Stage("compare", foreach="${compare}",
              comment="pairs of trained cells (params `compare:`): CKA heat map and D4 invariance profiles",
              cmd=(f"eqseg compare --params params.yaml --entry ${{item.name}} --out {compare}",),
              deps=("results/models/${item.dataset}", paths.TILES.format(dataset="${item.dataset}")),
              params=("compare", "normalise", "evaluate.device"), outs=(compare,)),
    ]


# ---- code deps: the static import graph of src/eqseg from the command's entry in cli.py

CLI = SRC / "eqseg" / "cli.py"


def _imports(node: ast.AST, modules: set[str]) -> set[str]:
    """The eqseg modules an AST node imports (`from eqseg import tracking` names the module eqseg.tracking)."""
    found = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            found |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            found |= {f"{n.module}.{a.name}" if f"{n.module}.{a.name}" in modules else n.module for a in n.names}
    return {m for m in found if m == "eqseg" or m.startswith("eqseg.")}


def command_entry(command: str, modules: set[str]) -> set[str]:
    """The modules `eqseg COMMAND` imports directly: eqseg, eqseg.cli and cli.py's top-level imports, and the imports
    in the command's function and in the module-level helpers of cli.py it calls (transitively)."""
    tree = ast.parse(CLI.read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}

    def registered(fn: ast.FunctionDef) -> str | None:
        for d in fn.decorator_list:
            if isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command":
                return d.args[0].value if d.args else fn.name.replace("_", "-")
        return None

    names = [name for name, fn in functions.items() if registered(fn) == command]
    if len(names) != 1:
        raise ValueError(f"src/eqseg/cli.py has no `{command}` command")
    entry = {"eqseg", "eqseg.cli"}
    for n in tree.body:
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            entry |= _imports(n, modules)
    seen: set[str] = set()
    while names:
        name = names.pop()
        if name in seen:
            continue
        seen.add(name)
        entry |= _imports(functions[name], modules)
        names += [c.func.id for c in ast.walk(functions[name])
                  if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id in functions]
    return entry


def import_graph():
    import grimp  # the [test] extra

    return grimp.build_graph("eqseg", cache_dir=None)


def imported_modules(command: str, graph) -> dict[str, bool]:
    """Every eqseg module `eqseg COMMAND` may import, each with whether it is imported itself (True) or only run as
    a package above an imported module (False): its entry, what those import (inside functions too), and the
    packages above each (importing eqseg.tiling.store runs eqseg/tiling/__init__.py), to a fixed point. A package
    that is only run follows only the imports at its top level, those that run with it. cli.py's own imports are
    those of its entry: the other commands' lazy imports are not this one's."""
    modules = set(graph.modules)
    todo = [(m, True) for m in command_entry(command, modules)]
    reached: dict[str, bool] = {}
    while todo:
        m, imported = todo.pop()
        if m in reached and (reached[m] or not imported):
            continue
        reached[m] = imported
        parts = m.split(".")
        todo += [(".".join(parts[:i]), False) for i in range(1, len(parts))]
        if m == "eqseg.cli":
            continue
        if imported:
            found = {d for d in graph.find_modules_directly_imported_by(m) if d.startswith("eqseg")}
            found |= dynamic_imports(m, modules)
        else:
            found = top_level_imports(m, modules)
        todo += [(d, True) for d in found]
    return reached


def module_file(module: str) -> Path:
    base = SRC.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def dynamic_imports(module: str, modules: set[str]) -> set[str]:
    """Modules imported by name (`__import__(name)`, `importlib.import_module(name)`), which the static graph does not
    see: every eqseg module named by a string in a module that makes such a call, and every module of its package
    if it lists them (`pkgutil.iter_modules`: eqseg.models loads its model modules this way)."""
    return _named(list(ast.walk(ast.parse(module_file(module).read_text()))), module, modules)


def _named(nodes: list[ast.AST], module: str, modules: set[str]) -> set[str]:
    """The eqseg modules these AST nodes of `module` import by name, if one of them does."""
    def called(name: str) -> bool:
        return any(isinstance(n, ast.Call) and ((isinstance(n.func, ast.Name) and n.func.id == name)
                                                or (isinstance(n.func, ast.Attribute) and n.func.attr == name))
                   for n in nodes)

    found = set()
    if called("__import__") or called("import_module"):
        found = {n.value for n in nodes if isinstance(n, ast.Constant) and n.value in modules}
    if called("iter_modules"):
        package = module if module_file(module).name == "__init__.py" else module.rsplit(".", 1)[0]
        found |= {m for m in modules if m.rsplit(".", 1)[0] == package}
    return found


def top_level_imports(module: str, modules: set[str]) -> set[str]:
    """The eqseg modules a module imports when it is run: its imports outside function bodies (by name too)."""
    top: list[ast.AST] = []
    todo: list[ast.AST] = [ast.parse(module_file(module).read_text())]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                top.append(child)
                todo.append(child)
    found = _named(top, module, modules)
    for node in top:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= _imports(node, modules)
    return found


def dep_path(module: str) -> str:
    """A module's code dep as dvc.yaml lists it: src/eqseg/__init__.py, src/eqseg/<package> or src/eqseg/<module>.py."""
    parts = module.split(".")
    if len(parts) == 1:
        return "src/eqseg/__init__.py"
    return f"src/eqseg/{parts[1]}" if (SRC / "eqseg" / parts[1]).is_dir() else f"src/eqseg/{parts[1]}.py"


OPTIONS_LEAF = "options"  # eqseg/<domain>/options.py: a domain's params schemas (a leaf: tests/test_architecture.py)


def code_deps(command: str, graph) -> list[str]:
    """The stage's code deps: dep_path of every module it may import, but for a package reached only through its
    options leaf (and run as the package above it), those two files."""
    reached = imported_modules(command, graph)
    whole = {dep_path(m) for m, imported in reached.items()
             if imported and not (m.count(".") == 2 and m.endswith("." + OPTIONS_LEAF))}
    deps = set()
    for m in reached:
        path = dep_path(m)
        deps.add(path if path in whole or path.endswith(".py") else module_file(m).relative_to(ROOT).as_posix())
    return sorted(deps)


# ---- dvc.yaml

def stage_dict(stage: Stage, graph) -> dict:
    """The stage as dvc.yaml holds it (what yaml.safe_load of the generated file gives)."""
    body: dict = {"cmd": " ".join(stage.cmd), "deps": [*stage.deps, *code_deps(stage.command, graph)]}
    for key in ("params", "outs", "metrics", "plots"):
        items = getattr(stage, key)
        if items:
            body[key] = [{i[0]: dict(i[1])} if isinstance(i, tuple) else i for i in items]
    if stage.foreach:
        return {"foreach": stage.foreach, "do": body}
    return {"matrix": dict(stage.matrix), **body} if stage.matrix else body


def _emit_stage(stage: Stage, graph) -> list[str]:
    d = stage_dict(stage, graph)
    lines = [f"  {stage.name}:" + (f"  # {stage.comment}" if stage.comment else "")]
    ind = "    "
    if stage.foreach:
        lines += [f"{ind}foreach: {stage.foreach}", f"{ind}do:"]
        ind, body = ind + "  ", d["do"]
    else:
        body = d
    if stage.matrix:
        lines.append(f"{ind}matrix:")
        lines += [f"{ind}  {k}: {v}" for k, v in stage.matrix.items()]
    if len(stage.cmd) == 1:
        lines.append(f"{ind}cmd: {stage.cmd[0]}")
    else:
        lines.append(f"{ind}cmd: >-")
        lines += [f"{ind}  {line}" for line in stage.cmd]
    for key in ("deps", "params", "outs", "metrics", "plots"):
        if key not in body:
            continue
        lines += [f"{ind}# {note}" for note in stage.notes.get(key, ())]
        lines.append(f"{ind}{key}:" + (f"  # {stage.section_comments[key]}" if key in stage.section_comments else ""))
        for item in body[key]:
            if isinstance(item, dict):
                (path, opts), = item.items()
                lines.append(f"{ind}  - {path}:")
                lines += [f"{ind}      {k}: {v}" for k, v in opts.items()]
            else:
                lines.append(f"{ind}  - {item}")
    return lines


def render(graph=None) -> str:
    """The text of dvc.yaml."""
    graph = graph if graph is not None else import_graph()
    out = [HEADER.rstrip("\n"), "stages:"]
    for i, stage in enumerate(stages()):
        if i and out[-1] != "":
            out.append("")
        if stage.name == "distill":
            out += ["  # ---- self-training (grid.distill): the same stages for the NAME+distill students", ""]
        out += _emit_stage(stage, graph)
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv == ["--write"]:
        DVC_YAML.write_text(text)
        print(f"wrote {DVC_YAML.relative_to(ROOT)} ({len(stages())} stages)", file=sys.stderr)
    elif argv == ["--check"]:
        if DVC_YAML.read_text() != text:
            print("dvc.yaml differs from workflow/stages.py: run `python workflow/stages.py --write`", file=sys.stderr)
            return 1
    elif not argv:
        sys.stdout.write(text)
    else:
        print("usage: python workflow/stages.py [--write | --check]   (no option: print dvc.yaml)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
