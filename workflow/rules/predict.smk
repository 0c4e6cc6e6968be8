rule predict:
    input:
        model=paths.MODEL,
        tiles=lambda w: paths.TILES.format(dataset=w.testset),
        data=lambda w: dataset_files(w.testset),  # the whole scenes and slides it predicts and scores
    output:
        directory(paths.PREDICT),
    params:
        cfg=lambda w: section(P.predict, P.normalise, P.train.precision),
    priority: PRIORITY["score"]
    log:
        "results/logs/predict/" + paths.CELL + "/{testset}.log",
    threads: 1  # the core reserved, as for evaluate; its torch threads are predict.threads (0: every core)
    shell:
        "eqseg predict-dataset --params {PARAMS_FILE:q} --model-dir {input.model:q} --dataset {wildcards.testset:q}"
        " --tiles {input.tiles:q} --out {output:q} > {log:q} 2>&1"
