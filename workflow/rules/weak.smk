rule weak:
    input:
        tiles=paths.TILES,
    output:
        directory(paths.WEAK),
    params:
        cfg=lambda w: section(P.weak),
    log:
        "results/logs/weak/{dataset}/{supervision}.log",
    shell:
        "eqseg weak {wildcards.dataset} {wildcards.supervision} --params {PARAMS_FILE} --tiles {input.tiles} --out {output} 2> {log}"
