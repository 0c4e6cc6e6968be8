rule digits:
    output:
        paths.DIGITS + "/metrics.json",
    params:
        cfg=lambda w: section(P.digits.model_dump(exclude={"models", "seeds"}), P.mlflow),
        out=paths.DIGITS,
    log:
        "results/logs/digits/{model}/seed{seed}.log",
    threads: 1
    shell:
        "eqseg digits --params {PARAMS_FILE} --model {wildcards.model} --seed {wildcards.seed} --out {params.out} 2> {log}"
