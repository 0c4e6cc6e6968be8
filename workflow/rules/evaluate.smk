rule evaluate:
    input:
        model=paths.MODEL,
        tiles=lambda w: paths.TILES.format(dataset=w.testset),
    output:
        [f"{paths.EVAL}/{name}" for name in paths.EVAL_FILES],
    params:
        cfg=lambda w: section(P.evaluate, P.normalise),
        out=paths.EVAL,
    log:
        "results/logs/evaluate/" + paths.CELL + "/{testset}.log",
    shell:
        "eqseg evaluate --params {PARAMS_FILE:q} --model-dir {input.model:q} --tiles {input.tiles:q}"
        " --out {params.out:q} > {log:q} 2>&1"
