rule train:
    input:
        tiles=paths.TILES,
        labels=paths.WEAK,
    output:
        directory(paths.MODEL),
    params:
        cfg=lambda w: section(P.train, P.model_options(w.model), P.normalise, P.mlflow),
    log:
        "results/logs/train/" + paths.CELL + ".log",
    threads: 2
    shell:
        "eqseg train --params {PARAMS_FILE:q} --dataset {wildcards.dataset:q} --model {wildcards.model:q}"
        " --supervision {wildcards.supervision:q} --variant {wildcards.variant:q} --budget {wildcards.budget:q}"
        " --seed {wildcards.seed:q} --tiles {input.tiles:q}"
        " --labels {input.labels:q} --out {output:q} > {log:q} 2>&1"
