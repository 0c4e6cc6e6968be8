"""docs/newcomers.md stays true: its marked code blocks run against the real registries (patched for the test only)
and their effect is checked through the project's entry points (build, parse_params, build_tile_store, generate,
make_weak_labels, the dvc.yaml generator, the CLI)."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT

GUIDE = ROOT / "docs" / "newcomers.md"


def blocks(text: str | None = None) -> dict[str, str]:
    """The code blocks of the guide marked `<!-- test: NAME -->`, by name."""
    text = GUIDE.read_text() if text is None else text
    found = re.findall(r"<!-- test: ([a-z-]+) -->\n```[a-z]*\n(.*?)```", text, flags=re.S)
    names = [n for n, _ in found]
    assert len(set(names)) == len(names), f"marker names repeat: {names}"
    return dict(found)


def entries(code: str, namespace: dict) -> dict:
    """A block that is the lines to add inside a dict literal (a table entry), evaluated as that literal."""
    return eval("{" + code + "}", namespace)


def run_block(code: str, namespace: dict) -> dict:
    exec(compile(code, str(GUIDE), "exec"), namespace)
    return namespace


def raw_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def merge(raw: dict, overlay: dict) -> dict:
    """The guide's params snippet applied to the repository's params.yaml: mappings merge, lists must keep the
    items listed before (the guide's lists say "those listed before, and the new one"), other values replace."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            merge(raw[key], value)
        elif isinstance(value, list) and isinstance(raw.get(key), list):
            assert set(raw[key]) <= set(value), f"{key}: the guide's list drops {sorted(set(raw[key]) - set(value))}"
            raw[key] = value
        else:
            raw[key] = value
    return raw


def test_the_guide_has_its_marked_blocks():
    assert set(blocks()) == {
        "model-module", "model-options", "model-options-entry", "model-params",
        "dataset-source", "dataset-registry", "dataset-registry-entry", "dataset-schema", "dataset-union", "dataset-params",
        "weak-generator", "weak-per-tile-entry", "weak-effort-entry", "weak-options", "weak-options-entry", "weak-params",
        "stage-path", "stage-command", "stage-locals", "stage-entry", "stage-rule",
    }


# --------------------------------------------------------------------------------------------------------- model
@pytest.fixture
def tiny_model(monkeypatch):
    """The guide's model module and options schema, registered for this test only."""
    from eqseg import models
    from eqseg.models import options, registry

    b = blocks()
    models.available()  # the built-in models first, as build() loads them
    before = set(registry._REGISTRY)
    module = types.ModuleType("eqseg_newcomer_tiny")
    run_block(b["model-module"], module.__dict__)
    for name in set(registry._REGISTRY) - before:  # put back through monkeypatch, which removes them afterwards
        monkeypatch.setitem(registry._REGISTRY, name, registry._REGISTRY.pop(name))
    ns = run_block(b["model-options"], dict(vars(options)))
    for name, schema in entries(b["model-options-entry"], ns).items():
        monkeypatch.setitem(options.NETWORK_OPTIONS, name, schema)  # config.MODEL_OPTIONS collects it
    return module


def test_model_is_built_and_trains_one_step(tiny_model):
    import torch

    from eqseg.losses import build_loss
    from eqseg.models import available, build, count_parameters

    assert "tiny_fcn" in available()
    torch.manual_seed(0)
    net = build("tiny_fcn", 3, 2, width=4)
    x, y = torch.randn(2, 3, 24, 24), torch.randint(0, 2, (2, 24, 24))
    y[:, :4] = 255  # no label
    logits = net(x)
    assert logits.shape == (2, 2, 24, 24) and count_parameters(net) > 0
    loss = build_loss({"ce": 1.0})(logits, y)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.parameters())


def test_model_options_match_its_builder_and_params_load(tiny_model):
    """As tests/test_architecture.py checks for every registered model, and params naming it load."""
    from eqseg import config
    from eqseg.config import parse_params
    from eqseg.errors import EqsegError
    from eqseg.models import _REGISTRY, build

    fields = config.MODEL_OPTIONS["tiny_fcn"].model_fields
    params = list(inspect.signature(_REGISTRY["tiny_fcn"]).parameters.values())[2:]
    assert [p.name for p in params] == list(fields) and all(p.default == fields[p.name].default for p in params)
    assert config.MODEL_OPTIONS["tiny_fcn"]().tile_multiple == build("tiny_fcn", 1, 2).tile_multiple

    raw = merge(raw_params(), yaml.safe_load(blocks()["model-params"]))
    p = parse_params(raw)
    assert "tiny_fcn" in {c["model"] for c in p.cells()}
    assert p.model_options("tiny_fcn") == {"width": 8}
    raw["grid"]["models"].append("tiny_fcnn")
    with pytest.raises(EqsegError, match="grid.models: model 'tiny_fcnn' has no entry under models"):
        parse_params(raw)
    raw["models"]["tiny_fcnn"] = {}
    with pytest.raises(EqsegError, match="models: unknown model 'tiny_fcnn'"):
        parse_params(raw)


def test_the_guide_names_the_loading_function():
    """The guide says a model module needs no entry besides its options: _load_builtin imports every module."""
    import pkgutil

    import eqseg.models

    assert "_load_builtin()" in GUIDE.read_text()
    eqseg.models.available()
    assert all(f"eqseg.models.{m.name}" in sys.modules for m in pkgutil.iter_modules(eqseg.models.__path__))


# ---------------------------------------------------------------------------------------------------- dataset kind
@pytest.fixture
def npz_kind(monkeypatch):
    """The guide's source, registry entry and schema; config.Params rebuilt with the guide's union, for this test."""
    from eqseg import config
    from eqseg.tiling import registry

    b = blocks()
    source = types.ModuleType("eqseg_newcomer_npz")
    source.__dict__["__name__"] = source.__name__
    sys.modules[source.__name__] = source  # dataclasses look the module up
    try:
        run_block(b["dataset-source"], source.__dict__)
    finally:
        del sys.modules[source.__name__]
    monkeypatch.setitem(sys.modules, "eqseg.tiling.npz", source)  # what the registry block imports
    ns = run_block(b["dataset-registry"], dict(vars(registry)))
    for kind, entry in entries(b["dataset-registry-entry"], ns).items():
        monkeypatch.setitem(registry.DATASET_KINDS, kind, entry)
    ns = run_block(b["dataset-schema"], dict(vars(config)))
    run_block(b["dataset-union"], ns)

    class Params(config.Params):  # the same Params, with the guide's DatasetConfig
        datasets: dict[str, ns["DatasetConfig"]]

    monkeypatch.setattr(config, "Params", Params)
    return source


def write_npz(folder: Path, names=("a", "b", "c"), size=(40, 36)) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        mask = np.zeros(size, np.uint8)
        mask[8:20, 10:30] = 1
        np.savez(folder / f"{name}.npz", image=rng.integers(0, 255, (3, *size)).astype(np.uint8), mask=mask)


def test_dataset_kind_tiles_through_the_real_entry(npz_kind, tmp_path):
    from eqseg.config import parse_params
    from eqseg.tiling.protocol import Source
    from eqseg.tiling.registry import open_source, source_names
    from eqseg.tiling.store import TileStore, build_tile_store

    write_npz(tmp_path / "data" / "arrays")
    raw = merge(raw_params(), yaml.safe_load(blocks()["dataset-params"]))
    raw["tile"] = {"size": 16}
    p = parse_params(raw)
    cfg = p.dataset("arrays")
    assert cfg.kind == "npz"
    assert source_names(cfg, tmp_path) == ["a", "b", "c"]
    src = open_source(cfg, "b", tmp_path)
    assert isinstance(src, Source) and (src.height, src.width, src.bands) == (40, 36, 3)
    meta = build_tile_store("arrays", cfg, p.tile, tmp_path / "tiles", root=tmp_path)
    store = TileStore(tmp_path / "tiles")
    assert meta.n_tiles == 3 * 9 and sorted(set(store.index.split)) == ["test", "train", "val"]
    assert set(np.unique(np.asarray(store.masks))) == {0, 1}  # edge tiles are shifted back inside: no padding
    read = src.read_tile(32, 32, 16, 40, 36)  # a tile reaching past the image: padded, 255 = no label there
    assert read.valid_fraction == 8 * 4 / 256 and (read.mask[8:] == 255).all() and (read.mask[:, 4:] == 255).all()
    assert read.valid.sum() == 32 and (read.mask[:8, :4] != 255).all()
    assert int(store.index.px_object.sum()) == int((np.asarray(store.masks) == 1).sum()) > 0  # per tile (tiles overlap)


def test_dataset_kind_schema_errors_name_the_key(npz_kind):
    from eqseg.config import parse_params
    from eqseg.errors import EqsegError

    raw = merge(raw_params(), yaml.safe_load(blocks()["dataset-params"]))
    del raw["datasets"]["arrays"]["files"]
    with pytest.raises(EqsegError, match=r"datasets\.arrays\.files: Field required"):
        parse_params(raw)
    raw["datasets"]["arrays"] |= {"files": ["x.npz"], "kind": "npzz"}
    with pytest.raises(EqsegError, match="datasets.arrays"):
        parse_params(raw)


def test_every_dataset_kind_has_its_branch_in_common_smk():
    """The guide's step d: dataset_files() in common.smk must know the files of every kind (its last branch is slides)."""
    from eqseg.tiling.registry import DATASET_KINDS

    text = (ROOT / "workflow/rules/common.smk").read_text()
    body = text.split("def dataset_files(name):", 1)[1].split("\ndef ", 1)[0]
    for kind in DATASET_KINDS:
        assert f'cfg.kind == "{kind}"' in body, kind
    assert "else:  # slide" in body  # what the guide says a new kind's branch must come before


# ------------------------------------------------------------------------------------------------- weak-label kind
@pytest.fixture
def interiors_kind(monkeypatch):
    from eqseg.weak import generators, options, simulate

    b = blocks()
    ns = run_block(b["weak-generator"], dict(vars(generators)))
    for kind, fn in entries(b["weak-per-tile-entry"], ns).items():
        monkeypatch.setitem(generators.PER_TILE, kind, fn)
    for kind, unit in entries(b["weak-effort-entry"], ns).items():
        monkeypatch.setitem(generators.EFFORT_UNITS, kind, unit)
    # LABEL_KINDS is built from PER_TILE when eqseg.weak.simulate is imported: rebuild it as that import would
    monkeypatch.setattr(simulate, "LABEL_KINDS", (*generators.PER_TILE, "partial"))
    ns = run_block(b["weak-options"], dict(vars(options)))
    for kind, schema in entries(b["weak-options-entry"], ns).items():
        monkeypatch.setitem(options.WEAK_KINDS, kind, schema)  # the table config.WEAK_KINDS is


def blob_mask() -> np.ndarray:
    mask = np.zeros((32, 32), np.uint8)
    mask[4:16, 6:20] = 1
    mask[20:30, 20:30] = 2
    mask[:, 30:] = 255  # padding: never labelled
    return mask


def test_weak_kind_generates_labels_through_the_real_entries(interiors_kind):
    from eqseg import config
    from eqseg.weak import generate
    from eqseg.weak.generators import PER_TILE
    from eqseg.weak.store import make_weak_labels

    mask = blob_mask()
    labels = generate(mask, "interiors", seed=0, depth=2)
    assert labels.dtype == np.uint8 and labels.shape == mask.shape
    labelled = labels != 255
    assert labelled.any() and (~labelled).any()
    assert (labels[labelled] == mask[labelled]).all()  # every label is right
    assert not labelled[:, 30:].any()  # padding stays unlabelled
    assert set(np.unique(labels[labelled])) == {0, 1, 2}
    assert np.array_equal(labels, generate(mask, "interiors", seed=0, depth=2))
    stack = np.stack([mask, mask])
    out, record = make_weak_labels(stack[:, None].repeat(3, axis=1), stack, np.array([0, 1]), "interiors", 0, {"depth": 2})
    assert np.array_equal(out[0], labels) and record["effort"]["unit"] == "regions" and record["effort"]["total"] > 0

    # the options schema is the function's options (as tests/test_architecture.py checks for every kind)
    fields = config.WEAK_KINDS["interiors"].model_fields
    params = list(inspect.signature(PER_TILE["interiors"]).parameters.values())[2:]
    assert [p.name for p in params] == list(fields) and all(p.default == fields[p.name].default for p in params)


def test_weak_kind_is_a_supervision_params_accept(interiors_kind):
    from eqseg.config import parse_params, parse_supervision
    from eqseg.errors import EqsegError

    assert parse_supervision("interiors+watershed").expansion == "watershed"
    assert parse_supervision("interiors+distill").distill
    raw = merge(raw_params(), yaml.safe_load(blocks()["weak-params"]))
    p = parse_params(raw)
    assert {"interiors", "interiors+watershed"} <= {c["supervision"] for c in p.cells()}
    raw["weak"]["options"]["interiors"] = {"dept": 2}
    with pytest.raises(EqsegError, match="weak.options.interiors.dept: unknown option"):
        parse_params(raw)
    with pytest.raises(ValueError, match="unknown supervision 'interior'"):
        parse_supervision("interior")


# --------------------------------------------------------------------------------------------------------- stage
@pytest.fixture
def stages_module():
    pytest.importorskip("grimp")
    spec = importlib.util.spec_from_file_location("eqseg_newcomer_stages", ROOT / "workflow" / "stages.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.fixture
def counts_stage(stages_module, monkeypatch, tmp_path):
    """The guide's path, command (in a copy of cli.py the generator reads) and Stage, for this test only."""
    from eqseg import paths

    b = blocks()
    for name, value in run_block(b["stage-path"], {}).items():
        if not name.startswith("__"):
            monkeypatch.setattr(paths, name, value, raising=False)
    cli_copy = tmp_path / "cli.py"
    cli_copy.write_text(stages_module.CLI.read_text() + "\n\n" + b["stage-command"])
    monkeypatch.setattr(stages_module, "CLI", cli_copy)
    ns = dict(vars(stages_module), tiles=paths.TILES.format(dataset="${key}"))
    run_block(b["stage-locals"], ns)
    new = eval("[" + b["stage-entry"] + "]", ns)
    described = stages_module.stages()
    at = [s.name for s in described].index("tile") + 1
    monkeypatch.setattr(stages_module, "stages", lambda: [*described[:at], *new, *described[at:]])
    return new


def test_stage_appears_in_the_generated_dvc_yaml(stages_module, counts_stage):
    (stage,) = counts_stage
    graph = stages_module.import_graph()
    committed = (ROOT / "dvc.yaml").read_text()
    text = stages_module.render(graph)
    assert (ROOT / "dvc.yaml").read_text() == committed  # rendered, not written
    assert "\n  class_counts:  # labelled pixels per class and split of every tile store\n    foreach: ${datasets}\n" in text
    assert "cmd: eqseg class-counts ${key} --tiles results/tiles/${key} --out results/counts/${key}.json" in text
    parsed = yaml.safe_load(text)["stages"]
    assert list(parsed).index("class_counts") == list(parsed).index("tile") + 1
    assert parsed["class_counts"] == stages_module.stage_dict(stage, graph)
    do = parsed["class_counts"]["do"]
    assert do["metrics"] == ["results/counts/${key}.json"]
    assert {"results/tiles/${key}", "src/eqseg/cli.py", "src/eqseg/tiling", "src/eqseg/utils"} <= set(do["deps"])


def test_stage_rule_runs_the_stage_command_with_its_options(counts_stage):
    from eqseg import paths

    (stage,) = counts_stage
    rule = blocks()["stage-rule"]
    cmd = "".join(re.findall(r"\"(.*)\"", rule.split("shell:", 1)[1]))  # as tests/test_stages.py reads the rules
    assert cmd.split()[1] == stage.command == "class-counts"
    assert set(re.findall(r"--[a-z-]+", cmd)) == set(re.findall(r"--[a-z-]+", " ".join(stage.cmd)))
    assert "paths.COUNTS" in rule and paths.COUNTS.format(dataset="${key}") == stage.metrics[0]


def test_stage_command_runs_on_a_tile_store(counts_stage, monkeypatch, tmp_path):
    import json

    from click.testing import CliRunner
    from PIL import Image

    import eqseg.cli as cli_module
    from eqseg.config import PairsDataset, TileConfig
    from eqseg.tiling.store import build_tile_store

    for name in ("a", "b", "c"):
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        mask = np.zeros((32, 32), np.uint8)
        mask[:10, :10] = 1
        Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "images" / f"{name}.png")
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}.png")
    cfg = PairsDataset(kind="pairs", images="images", masks="masks", classes=["background", "object"])
    build_tile_store("px", cfg, TileConfig(size=16), tmp_path / "tiles", root=tmp_path)

    monkeypatch.setitem(cli_module.cli.commands, "class-counts", None)  # removed again after the test
    run_block(blocks()["stage-command"], dict(vars(cli_module)))
    out = tmp_path / "counts.json"
    result = CliRunner().invoke(cli_module.cli, ["class-counts", "px", "--tiles", str(tmp_path / "tiles"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    counts = json.loads(out.read_text())
    assert set(counts) == {"train", "val", "test"}
    assert all(c == {"background": 32 * 32 - 100, "object": 100} for c in counts.values())
