def train_labels(w):
    """The labels a cell trains on: its weak labels, or for NAME+distill its teacher's pseudo-labels."""
    sup = P.supervision(w.supervision)
    if sup.distill:
        return paths.PSEUDO.format(dataset=w.dataset, model=w.model, supervision=sup.parent, variant=w.variant,
                                   budget=w.budget, seed=w.seed)
    return paths.WEAK.format(dataset=w.dataset, supervision=w.supervision)


rule train:
    input:
        tiles=paths.TILES,
        labels=train_labels,
    output:
        # curves.png in `snakemake --report` (report() annotates the folder; its path stays that of dvc.yaml)
        report(directory(paths.MODEL), patterns=["{plot,curves}.png"], caption="../report/curves.rst",
               category="Training", subcategory="{dataset}",
               labels={"model": "{model}", "supervision": "{supervision}", "variant": "{variant}",
                       "budget": "{budget} %", "seed": "{seed}"}),
    params:
        cfg=lambda w: section(P.train, P.model_options(w.model), P.normalise, P.mlflow),
    priority: PRIORITY["train"]
    log:
        "results/logs/train/" + paths.CELL + ".log",
    # the torch threads of one training (train.threads) are the cores reserved; 0 (torch takes every core but the
    # loader workers') reserves 2. Not workflow.cores: SLURM runs give no --cores
    threads: P.train.threads or 2
    shell:
        "eqseg train --params {PARAMS_FILE:q} --dataset {wildcards.dataset:q} --model {wildcards.model:q}"
        " --supervision {wildcards.supervision:q} --variant {wildcards.variant:q} --budget {wildcards.budget:q}"
        " --seed {wildcards.seed:q} --tiles {input.tiles:q}"
        " --labels {input.labels:q} --out {output:q} > {log:q} 2>&1"


# teacher (the weak cell) -> pseudo-labels -> student (the NAME+distill cell, rule train)
rule distill:
    input:
        model=paths.MODEL,
        tiles=paths.TILES,
        labels=paths.WEAK,
    output:
        directory(paths.PSEUDO),
    params:
        cfg=lambda w: section(P.distill, P.train.max_train_tiles, P.train.precision, P.normalise),
    priority: PRIORITY["train"]
    log:
        "results/logs/distill/" + paths.CELL + ".log",
    shell:
        "eqseg distill --params {PARAMS_FILE:q} --model-dir {input.model:q} --tiles {input.tiles:q}"
        " --labels {input.labels:q} --out {output:q} > {log:q} 2>&1"
