rule predict:
    input:
        model=paths.MODEL,
        tiles=paths.TILES,
    output:
        directory(paths.PREDICT),
    params:
        cfg=lambda w: section(P.predict),
    log:
        "results/logs/predict/{dataset}/{model}/{supervision}/seed{seed}.log",
    threads: 2
    shell:
        "eqseg predict-dataset --params {PARAMS_FILE} --model-dir {input.model} --dataset {wildcards.dataset}"
        " --tiles {input.tiles} --out {output} 2> {log}"
