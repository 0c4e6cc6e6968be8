# Shared helpers: the experiment grid and the rule params that make Snakemake re-run a job when its own part of
# params.yaml changes (rerun-triggers in profiles/default exclude mtime: DVC rewrites timestamps, DVC #8602).
import itertools
import json


def grid_outputs(pattern):
    g = P.grid
    return [
        pattern.format(dataset=d, model=m, supervision=s, seed=seed)
        for d, m, s, seed in itertools.product(g.datasets, g.models, g.supervision, g.seeds)
    ]


def section(*parts):
    return json.dumps([p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts], sort_keys=True)


onstart:
    shell(f"eqseg tracking-init --params {PARAMS_FILE}")
