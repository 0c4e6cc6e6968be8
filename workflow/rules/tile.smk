rule tile:
    input:
        lambda w: dataset_files(w.dataset),
    output:
        directory(paths.TILES),
    params:
        cfg=lambda w: section(P.dataset(w.dataset), P.tile),
    priority: PRIORITY["prepare"]
    log:
        "results/logs/tile/{dataset}.log",
    shell:
        "eqseg tile {wildcards.dataset:q} --params {PARAMS_FILE:q} --out {output:q} > {log:q} 2>&1"
