rule train:
    input:
        tiles=paths.TILES,
        labels=paths.WEAK,
    output:
        directory(paths.MODEL),
    params:
        cfg=lambda w: section(P.train, P.model_options(w.model), P.mlflow),
    log:
        "results/logs/train/{dataset}/{model}/{supervision}/seed{seed}.log",
    threads: 2
    shell:
        "eqseg train --params {PARAMS_FILE} --dataset {wildcards.dataset} --model {wildcards.model}"
        " --supervision {wildcards.supervision} --seed {wildcards.seed} --tiles {input.tiles} --labels {input.labels}"
        " --out {output} 2> {log}"
