rule tile:
    input:
        lambda w: [paths.SLIDES.format(group=w.dataset)] if w.dataset in P.slides else [],
    output:
        directory(paths.TILES),
    params:
        cfg=lambda w: section(P.dataset(w.dataset), P.tile),
    log:
        "results/logs/tile/{dataset}.log",
    shell:
        "eqseg tile {wildcards.dataset} --params {PARAMS_FILE} --out {output} 2> {log}"
