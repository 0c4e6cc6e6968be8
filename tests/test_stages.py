"""dvc.yaml is generated from workflow/stages.py: the committed file is the generator's output, DVC reads it, and
each stage's code deps hold every eqseg module its command can import (the static import graph, lazy imports too)."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest
import yaml

from conftest import ROOT

grimp = pytest.importorskip("grimp")

_spec = importlib.util.spec_from_file_location("eqseg_workflow_stages", ROOT / "workflow" / "stages.py")
stages = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(stages)


@pytest.fixture(scope="module")
def graph():
    return stages.import_graph()


@pytest.fixture(scope="module")
def generated(graph):
    return stages.render(graph)


def test_committed_dvc_yaml_is_the_generated_one(generated):
    committed = (ROOT / "dvc.yaml").read_text()
    assert committed == generated, ("dvc.yaml differs from what workflow/stages.py generates (a hand edit, or code "
                                    "whose imports changed): run `python workflow/stages.py --write`")


def test_the_text_parses_to_the_described_stages(generated, graph):
    """The hand-rolled YAML writer (it keeps the comments) says what the stage description says."""
    parsed = yaml.safe_load(generated)["stages"]
    described = stages.stages()
    assert list(parsed) == [s.name for s in described]
    for s in described:
        assert parsed[s.name] == stages.stage_dict(s, graph), s.name
    assert len(described) == 17 and len({s.name for s in described}) == 17


def test_every_stage_runs_an_eqseg_command_with_its_own_outputs():
    cli_text = (ROOT / "src/eqseg/cli.py").read_text()
    outs = {}
    for s in stages.stages():
        assert " ".join(s.cmd).startswith(f"eqseg {s.command} ")
        assert f'"{s.command}"' in cli_text or f"def {s.command.replace('-', '_')}(" in cli_text
        for o in (*s.outs, *s.metrics, *(p[0] if isinstance(p, tuple) else p for p in s.plots)):
            assert o not in outs, f"{o}: an output of {outs[o]} and {s.name}"
            outs[o] = s.name


def covered(module: str, deps: set[str]) -> bool:
    """A module's file is a dep itself or lies in a folder that is (as tests/test_pipeline_e2e.py checks a real run)."""
    path = stages.module_file(module).relative_to(ROOT).as_posix()
    return any(path == d or path.startswith(d + "/") for d in deps)


def test_code_deps_of_evaluate_hold_everything_grimp_finds_upstream(graph):
    """Against grimp directly: the modules evaluate.run (the command's implementation) imports transitively, and the
    CLI's own imports, each in a dep (its file, or the package folder holding it)."""
    deps = set(stages.stage_dict(next(s for s in stages.stages() if s.name == "evaluate"), graph)["deps"])
    upstream = {"eqseg.evaluate.run", "eqseg.config", *graph.find_upstream_modules("eqseg.evaluate.run"),
                *graph.find_upstream_modules("eqseg.config"), "eqseg", "eqseg.cli", "eqseg.paths", "eqseg.errors"}
    assert all(covered(m, deps) for m in upstream), sorted(m for m in upstream if not covered(m, deps))
    # evaluate scores classical cells too: eqseg.inference loads their models lazily
    assert "src/eqseg/classical" in deps and "src/eqseg/train" not in deps and "src/eqseg/weak" not in deps
    # params' weak options: the leaf and the package's __init__ that runs to import it, not eqseg.weak's code
    assert {"src/eqseg/weak/__init__.py", "src/eqseg/weak/options.py"} <= deps


def test_code_deps_of_tile(graph):
    """Written out by hand: tiling opens slides as sources (the dep 8f916df had to add by hand); loading params
    imports the options leaves of models, losses, weak kinds and classical methods, and the __init__ of each
    package (torch-free: they load their code on first use), not the packages' code."""
    tile = stages.stage_dict(next(s for s in stages.stages() if s.name == "tile"), graph)["do"]
    leaves = [f"src/eqseg/{p}/{f}" for p in ("classical", "losses", "models", "weak") for f in ("__init__.py", "options.py")]
    assert tile["deps"] == ["data/${key}", "src/eqseg/__init__.py", *leaves[:2], "src/eqseg/cli.py", "src/eqseg/config.py",
                            "src/eqseg/errors.py", "src/eqseg/labels.py", *leaves[2:6], "src/eqseg/paths.py",
                            "src/eqseg/slides", "src/eqseg/tiling", "src/eqseg/utils", *leaves[6:]]


def test_a_package_run_above_a_module_follows_only_its_top_level_imports(graph):
    """Importing eqseg.models.options runs eqseg/models/__init__.py, whose lazy imports (in functions: build's model
    modules, `__getattr__`'s registry) do not run with it; a command that imports eqseg.models itself gets them."""
    modules = set(graph.modules)
    assert stages.top_level_imports("eqseg.models", modules) <= {"eqseg.errors"}
    assert "eqseg.models.registry" in graph.find_modules_directly_imported_by("eqseg.models")
    assert {"eqseg.models.unet", "eqseg.models.gunet"} <= stages.dynamic_imports("eqseg.models", modules)
    reached = stages.imported_modules("tile", graph)
    assert reached["eqseg.models"] is False and reached["eqseg.models.options"] is True
    assert not any(m.startswith(("eqseg.models.", "eqseg.losses.", "eqseg.classical.")) and not m.endswith(".options")
                   for m in reached)
    assert stages.imported_modules("train", graph)["eqseg.models"] is True


def test_a_command_depends_on_the_imports_of_its_own_function_only():
    """cli.py imports every command's implementation lazily: `eqseg report` depends on report.py, not on torch code."""
    modules = set(grimp.build_graph("eqseg", cache_dir=None).modules)
    report = stages.command_entry("report", modules)
    assert {"eqseg.report", "eqseg.config", "eqseg.cli", "eqseg.paths", "eqseg.errors"} <= report
    assert not any(m.startswith(("eqseg.train", "eqseg.models", "eqseg.tiling")) for m in report)
    with pytest.raises(ValueError, match="no `nope` command"):
        stages.command_entry("nope", modules)


def test_snakemake_rules_pass_the_options_of_the_dvc_commands():
    """The Snakemake rules stay hand-written: each `eqseg` command there takes the options its DVC stage passes."""
    shells = {}
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        for block in re.findall(r"shell:\n((?:\s+\".*\"\n?)+)", smk.read_text()):
            cmd = "".join(re.findall(r"\"(.*)\"", block))
            shells[cmd.split()[1]] = set(re.findall(r"--[a-z-]+", cmd))
    for s in stages.stages():
        if s.command in shells:
            assert set(re.findall(r"--[a-z-]+", " ".join(s.cmd))) == shells[s.command], s.name
    assert {s.command for s in stages.stages()} <= set(shells)
