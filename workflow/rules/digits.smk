rule digits:
    input:
        DIGITS_DATA,
    output:
        paths.DIGITS + "/metrics.json",
    params:
        cfg=lambda w: section(P.digits.model_dump(exclude={"models", "seeds"}), P.mlflow),
        out=paths.DIGITS,
    log:
        "results/logs/digits/{model}/seed{seed}.log",
    threads: 1
    shell:
        "eqseg digits --params {PARAMS_FILE:q} --model {wildcards.model:q} --seed {wildcards.seed:q}"
        " --out {params.out:q} > {log:q} 2>&1"
