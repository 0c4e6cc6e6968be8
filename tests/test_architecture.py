"""The seams of the code base: layering, one D4, one normalisation, a configuration that loads without torch."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

SRC = Path(__file__).resolve().parents[1] / "src" / "eqseg"

# Top to bottom; names in one layer are siblings that must not import each other. No package imports one above it.
LAYERS = (
    ("cli",),
    ("report", "compare"),
    ("train", "distill", "evaluate", "predict", "digits"),
    ("inference", "tracking"),
    ("data", "losses", "classical"),
    ("weak",),
    ("tiling", "slides"),  # one layer: tiling opens slides as sources, slides implement the tiling Source protocol
    ("models", "metrics", "stats"),
    ("config", "runtime", "labels", "paths"),
    ("utils",),  # atomic outputs, strict JSON, option checks, the schema base, processes and CPUs: below all but errors
    ("errors",),
)


# The params schemas of the domains, beside their code (eqseg/<domain>/options.py): leaves that loading params imports,
# through their packages' __init__ (which import nothing eagerly: torch and numpy load on first use of a name).
OPTIONS_LEAVES = ("eqseg.classical.options", "eqseg.losses.options", "eqseg.models.options", "eqseg.weak.options")


def test_loading_params_imports_neither_torch_nor_the_domain(root):
    """Only the options leaves of the domains (and the package __init__ files Python runs to reach them), the
    schema base and the errors: no torch, no numpy, no domain code."""
    code = ("import sys; from eqseg.config import load_params; load_params('params.yaml'); "
            "print(sorted(m for m in sys.modules if m in ('torch', 'numpy') or m.startswith('eqseg.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    packages = sorted(leaf.rsplit(".", 1)[0] for leaf in OPTIONS_LEAVES)
    assert out.strip() == str(sorted(["eqseg.config", "eqseg.errors", "eqseg.utils", "eqseg.utils.schema",
                                      *OPTIONS_LEAVES, *packages])), out


SOURCE_READER_LIBRARIES = ("rasterio", "shapely", "pyproj", "pyogrio", "geopandas", "openslide", "tiffslide", "mlflow")


def test_training_imports_no_source_reader(root):
    """Training, the models, the losses and the step bench read built tile stores only: importing them loads none
    of the raster, vector or slide libraries (nor MLflow). What this buys: a GPU node, or a device check that
    carries its packages as wheels (bench/README.md, "On a GPU: what one device call can carry": rasterio's
    wheel alone is 36 MB), needs none."""
    code = ("import sys; sys.path.insert(0, 'bench'); import eqseg.train.loop, eqseg.models, eqseg.losses, "
            "eqseg.runtime, bench_train; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({SOURCE_READER_LIBRARIES!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_options_leaves_import_nothing_but_utils_and_errors():
    """Every eqseg/*/options.py is a leaf: pydantic, the standard library, eqseg.utils and eqseg.errors only (a
    lower layer may import it: test_import_layers allows exactly that), and importing it loads neither torch, numpy
    nor any module of its domain but the package's __init__."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("eqseg", cache_dir=None)
    leaves = sorted(m for m in graph.modules if m.count(".") == 2 and m.endswith(".options"))
    assert leaves == sorted(OPTIONS_LEAVES), "a new eqseg/<domain>/options.py? add it to OPTIONS_LEAVES"
    for leaf in leaves:
        inside = {m for m in graph.find_upstream_modules(leaf) if m.startswith("eqseg")}
        assert all(m == "eqseg.errors" or m.startswith("eqseg.utils.") for m in inside), (leaf, sorted(inside))
        code = (f"import sys, {leaf}; print(sorted(m for m in sys.modules if m in ('torch', 'numpy') "
                "or m.startswith('eqseg.')))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        allowed = {leaf, leaf.rsplit(".", 1)[0], "eqseg.errors", "eqseg.utils", *inside}
        assert set(eval(out)) <= allowed, (leaf, out)


@pytest.mark.parametrize("package, implementation", [("eqseg.losses", "eqseg.losses.terms"),
                                                     ("eqseg.weak", "eqseg.weak.simulate"),
                                                     ("eqseg.classical", "eqseg.classical.registry")])
def test_lazy_packages_export_their_implementation(package, implementation):
    """A package whose options leaf params load keeps its entry points in a module of its own, loaded on first use:
    every name of the package is that module's, and no name is also a submodule's (importing eqseg.weak.expand
    would have replaced the function `expand` on the package by the module)."""
    import importlib
    import pkgutil

    pkg, impl = importlib.import_module(package), importlib.import_module(implementation)
    assert all(getattr(pkg, name) is getattr(impl, name) for name in pkg.__all__)
    assert set(pkg.__all__) == set(getattr(impl, "__all__", pkg.__all__))
    submodules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
    assert not set(pkg.__all__) & submodules
    assert not hasattr(pkg, "no_such_name")


def test_snakemake_wildcards_are_the_names_eqseg_checks(root):
    """The Snakefile constrains its name wildcards with eqseg.config's patterns (imported, not rewritten), and these
    match every cell of the shipped params files."""
    import re

    from eqseg.config import NAME_PATTERN, SUPERVISION_PATTERN, VARIANTS, load_params

    block = (root / "Snakefile").read_text().split("wildcard_constraints:", 1)[1].split("\n\n", 1)[0]
    constraints = dict(line.strip().rstrip(",").split("=", 1) for line in block.strip().splitlines())
    assert constraints == {**dict.fromkeys(("dataset", "model", "group", "testset", "name"), "NAME_PATTERN"),
                           "supervision": "SUPERVISION_PATTERN", "variant": '"|".join(VARIANTS)',
                           "budget": 'r"\\d+"', "seed": 'r"\\d+"'}
    files = [root / "params.yaml", root / "tests/smoke/params.yaml", *sorted((root / "configs").glob("*.yaml"))]
    for f in files:
        p = load_params(f)
        for cell in p.evaluations():
            for key in ("dataset", "model", "testset"):
                assert re.fullmatch(NAME_PATTERN, cell[key]), (f.name, key, cell[key])
            assert re.fullmatch(SUPERVISION_PATTERN, cell["supervision"]), (f.name, cell["supervision"])
            assert cell["variant"] in VARIANTS
        for name in [*p.slides, *(c.name for c in p.compare)]:
            assert re.fullmatch(NAME_PATTERN, name), (f.name, name)
    assert not re.fullmatch(SUPERVISION_PATTERN, "points/../x") and not re.fullmatch(NAME_PATTERN, "+distill")


def test_import_layers():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("eqseg", cache_dir=None)
    present = {m.split(".")[1] for m in graph.modules if m.count(".") >= 1}
    layers = [grimp.Layer(*(name for name in layer if name in present), independent="tiling" not in layer)
              for layer in LAYERS]
    for leaf in OPTIONS_LEAVES:  # the one exception: a lower layer (config) may import a domain's options leaf
        for importer in graph.find_modules_that_directly_import(leaf):
            if not importer.startswith(leaf.rsplit(".", 1)[0] + "."):
                graph.remove_import(importer=importer, imported=leaf)
    illegal = graph.find_illegal_dependencies_for_layers(layers=layers, containers={"eqseg"})
    described = sorted(f"{d.importer} -> {d.imported}: " + "; ".join(
        f"{sorted(r.heads)} -> {list(r.middle)} -> {sorted(r.tails)}" for r in d.routes) for d in illegal)
    assert not illegal, "\n".join(described)
    placed = {name for layer in LAYERS for name in layer}
    assert present - {"__main__"} <= placed, f"packages not placed in a layer: {sorted(present - placed - {'__main__'})}"


def test_no_import_cycles():
    """No module of eqseg imports itself back through others: a lazy import inside a function counts too (grimp
    records it), since it is a circle all the same, only one that fails later."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("eqseg", cache_dir=None)
    imports = {m: sorted(d for d in graph.find_modules_directly_imported_by(m) if d.startswith("eqseg"))
               for m in graph.modules if m.startswith("eqseg")}
    cycles = _strongly_connected(imports)
    loops = [graph.find_shortest_chain(importer=c[0], imported=c[1]) + graph.find_shortest_chain(importer=c[1], imported=c[0])[1:]
             for c in cycles]  # one circle through the first two modules of each group
    assert not cycles, "import cycles:\n" + "\n".join(f"{', '.join(c)}: {' -> '.join(loop)}" for c, loop in zip(cycles, loops))


def _strongly_connected(edges: dict[str, list[str]]) -> list[list[str]]:
    """The groups of more than one module that all reach each other (Tarjan's algorithm, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, []))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return sorted(groups)


def test_models_import_nothing_of_the_pipeline():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("eqseg", cache_dir=None)
    outside = {d for m in graph.find_descendants("eqseg.models") | {"eqseg.models"} if m not in OPTIONS_LEAVES
               for d in graph.find_modules_directly_imported_by(m)
               if d.startswith("eqseg.") and not d.startswith("eqseg.models") and d != "eqseg.errors"}
    assert not outside, outside


# --------------------------------------------------------------------------------------------------- one D4
def test_d4_is_written_once():
    """Only models/groups.py calls rot90 or flip on the pixel grid (in code; comments may mention them)."""
    import ast

    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel == "models/groups.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            if name in ("rot90", "flip", "fliplr", "flipud"):
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == [], offenders


def test_d4_torch_and_numpy_views_agree_and_form_the_group():
    from eqseg.models.groups import D4

    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float64).reshape(2, 3, 5, 5)
    for g in range(8):
        assert np.array_equal(D4.transform(x, g).numpy(), D4.transform_numpy(x.numpy(), g))
        assert torch.equal(D4.untransform(D4.transform(x, g), g), x)
        for h in range(8):
            assert torch.equal(D4.transform(D4.transform(x, h), g), D4.transform(x, D4.compose(g, h)))
    images = {D4.transform(x, g).numpy().tobytes() for g in range(8)}
    assert len(images) == 8
    assert [D4.is_reflection(g) for g in range(8)] == [False] * 4 + [True] * 4


class _Turn(torch.nn.Module):
    """A 'model' whose output is its input turned by element k: equivariant under a shared D4 only if the users
    below apply g the same way (g·f(x) = T_g T_k x, f(g·x) = T_k T_g x; equal iff g and k commute)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        from eqseg.models.groups import D4

        return D4.transform(x, self.k)


def test_every_user_agrees_on_d4(monkeypatch):
    """Augmentation, TTA, the consistency loss and the equivariance metric all use models.groups.D4."""
    from eqseg.evaluate.run import equivariance_errors
    from eqseg.losses import consistency_loss
    from eqseg.models.groups import D4
    from eqseg.predict.run import Timing, window_probabilities

    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    # metric: a model that turns by the central element r2 commutes with all of D4 -> zero error for every g
    errs = equivariance_errors(_Turn(2), x)
    assert errs["equivariance_error_max"] == 0.0
    # ... and one that mirrors does not commute with quarter turns: rotations fail, reflections too except m, mr2
    errs = equivariance_errors(_Turn(4), x)
    assert errs["equivariance_error_r1"] > 0.1 and errs["equivariance_error_mr2"] == 0.0 and errs["equivariance_error_m"] == 0.0
    # consistency loss: zero for the commuting model, whatever element the generator draws
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        assert float(consistency_loss(_Turn(2), x.float(), gen)) == pytest.approx(0.0, abs=1e-12)
    # TTA: averaging T_g^-1 f(T_g x) over D4 for f = identity gives back softmax(x) exactly
    probs = window_probabilities(torch.nn.Identity(), x.float().numpy(), True, torch.device("cpu"), Timing())
    assert np.allclose(probs, torch.softmax(x.float(), 1).numpy(), atol=1e-6)
    # augmentation: the dataset applies D4.transform_numpy with the element its seeded generator draws
    from eqseg.data import dataset as ds_mod

    seen = []
    real = D4.transform_numpy
    monkeypatch.setattr(type(D4), "transform_numpy", lambda self, a, g: seen.append(g) or real(a, g))
    store = _TinyStore()
    item = ds_mod.TileDataset(store, np.array([0]), augment="d4", seed=7)
    image, mask, _ = item[0]
    g = int(np.random.default_rng((7, 0, 0)).integers(8))
    assert seen == [g, g]
    assert np.array_equal(mask.numpy(), real(store.masks[0], g))


class _TinyStore:
    """The parts of a TileStore that TileDataset reads."""

    def __init__(self):
        import pandas as pd

        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 255, (1, 2, 8, 8)).astype(np.uint8)
        self.masks = rng.integers(0, 2, (1, 8, 8)).astype(np.uint8)
        self.meta = SimpleNamespace(band_mean=[100.0, 120.0], band_std=[50.0, 40.0])  # the StoreMeta fields read
        self.index = pd.DataFrame({"tile_id": [0], "source": ["a"]})


# --------------------------------------------------------------------------------------------------- typed options
def test_typed_model_options_match_the_builders():
    from eqseg import config
    from eqseg.models import _REGISTRY, available

    for name in available():
        assert name in config.MODEL_OPTIONS, name
        params = list(inspect.signature(_REGISTRY[name]).parameters.values())[2:]
        fields = config.MODEL_OPTIONS[name].model_fields
        assert [p.name for p in params] == list(fields), name
        assert all(p.default == fields[p.name].default for p in params), name
    for name, options in [("unet", {"depth": 3}), ("p4m_unet", {"depth": 2}), ("gridnet", {"rows": 3})]:
        from eqseg.models import build

        typed = config.MODEL_OPTIONS[name].model_validate(options)
        assert typed.tile_multiple == build(name, 1, 2, **options).tile_multiple


def test_typed_weak_and_loss_options_match_the_functions():
    from eqseg import config
    from eqseg.losses import TERMS
    from eqseg.weak.expansion import _METHODS
    from eqseg.weak.generators import PER_TILE, partial

    generators = dict(PER_TILE) | {"partial": partial}
    assert set(config.WEAK_KINDS) == set(generators)
    for kind, fn in generators.items():
        params = list(inspect.signature(fn).parameters.values())[3 if kind == "partial" else 2:]
        fields = config.WEAK_KINDS[kind].model_fields
        assert [p.name for p in params] == list(fields) and all(p.default == fields[p.name].default for p in params), kind
    assert set(config.EXPANSIONS) == set(_METHODS)
    for method, fn in _METHODS.items():
        params = list(inspect.signature(fn).parameters.values())[2:]
        fields = config.EXPANSIONS[method].model_fields
        assert [p.name for p in params] == list(fields) and all(p.default == fields[p.name].default for p in params), method
    assert set(config.LOSS_TERMS) == set(TERMS)
    for term, (fn, needs) in TERMS.items():
        params = list(inspect.signature(fn).parameters.values())[len(needs):]
        fields = {k: f for k, f in config.LOSS_TERMS[term].model_fields.items() if k != "weight"}
        assert [p.name for p in params] == list(fields) and all(p.default == fields[p.name].default for p in params), term


@pytest.mark.parametrize("bad, needle", [
    ({"datasets": {"../../x": None}}, "'../../x' is not a valid name"),
    ({"grid": {"datasets": ["x;touch INJECTED;"]}}, "grid.datasets: 'x;touch INJECTED;' is not a valid name"),
    ({"mlflow": {"experiment": "../e"}}, "mlflow.experiment: '../e' is not a valid name"),
    ({"slides": {"/abs/path": None}}, "'/abs/path' is not a valid name"),
    ({"weak": {"options": {"points": {"per_objct": 2}}}}, "weak.options.points.per_objct: unknown option"),
    ({"weak": {"expansion_options": {"superpixels": {"n_segments": 2}}}}, "weak.expansion_options.superpixels.n_segments: unknown option"),
    ({"train": {"loss": {"ce": 1, "dice": {"weight": 1, "smoth": 2}}}}, "train.loss: dice.smoth: unknown option"),
    ({"models": {"unet": {"depth": 0}}}, "models.unet.depth"),
    ({"normalise": {"mode": "stain"}}, "normalise.mode"),
])
def test_bad_names_and_options_fail_at_load(root, bad, needle):
    import copy

    import yaml

    from eqseg.config import parse_params
    from eqseg.errors import EqsegError

    raw = yaml.safe_load((root / "params.yaml").read_text())
    for key, value in bad.items():
        if key in ("datasets", "slides"):
            (name, _), = value.items()
            section = raw.setdefault(key, {})
            template = "cpm15_slides" if key == "slides" else "cpm15"
            section[name] = copy.deepcopy(raw[key][template])
        elif isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    with pytest.raises(EqsegError) as err:
        parse_params(raw, "params.yaml")
    message = str(err.value)
    assert "\n" not in message and needle in message, message


def test_typed_classical_options_match_the_methods():
    from eqseg import config
    from eqseg.classical import CLASSICAL, methods

    specs = {"otsu": {}, "kmeans": methods.KMEANS, "watershed": methods.WATERSHED, "felzenszwalb": methods.FELZENSZWALB,
             "split_merge": methods.SPLIT_MERGE}
    assert set(config.CLASSICAL_OPTIONS) == set(CLASSICAL) == set(specs)
    for name, spec in specs.items():
        spec = {**spec, **methods.COMMON}
        fields = {k: f for k, f in config.CLASSICAL_OPTIONS[name].model_fields.items() if k != "max_fit_tiles"}
        assert set(fields) == set(spec), name
        assert all(fields[k].default == default for k, (_, _, default) in spec.items()), name
