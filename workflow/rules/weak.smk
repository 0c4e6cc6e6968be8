rule weak:
    input:
        tiles=paths.TILES,
    output:
        directory(paths.WEAK),
    params:
        cfg=lambda w: section(P.weak),
    priority: PRIORITY["prepare"]
    log:
        "results/logs/weak/{dataset}/{supervision}.log",
    shell:
        "eqseg weak {wildcards.dataset:q} {wildcards.supervision:q} --params {PARAMS_FILE:q} --tiles {input.tiles:q}"
        " --out {output:q} > {log:q} 2>&1"
