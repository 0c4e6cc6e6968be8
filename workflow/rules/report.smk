rule report:
    input:
        grid_outputs(paths.EVAL + "/metrics.json"),
        [paths.DIGITS.format(model=m, seed=s) + "/metrics.json" for m in P.digits.models for s in P.digits.seeds],
    output:
        [f"{paths.REPORT}/{name}" for name in paths.REPORT_FILES],
    log:
        "results/logs/report.log",
    shell:
        "eqseg report --params {PARAMS_FILE:q} --out {paths.REPORT:q} > {log:q} 2>&1"
