rule evaluate:
    input:
        model=paths.MODEL,
        tiles=paths.TILES,
    output:
        [f"{paths.EVAL}/{name}" for name in paths.EVAL_FILES],
    params:
        cfg=lambda w: section(P.evaluate),
        out=paths.EVAL,
    log:
        "results/logs/evaluate/{dataset}/{model}/{supervision}/seed{seed}.log",
    shell:
        "eqseg evaluate --params {PARAMS_FILE} --model-dir {input.model} --tiles {input.tiles} --out {params.out} 2> {log}"
