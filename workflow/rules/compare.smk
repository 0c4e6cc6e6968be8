rule compare:
    input:
        a=lambda w: paths.MODEL.format(**compare_entry(w).cell("a")),
        b=lambda w: paths.MODEL.format(**compare_entry(w).cell("b")),
        tiles=paths.TILES,
    output:
        # its heat maps in `snakemake --report` (report() annotates the folder; its path stays that of dvc.yaml)
        report(directory(paths.COMPARE), patterns=["{plot,cka|invariance}.png"], caption="../report/compare.rst",
               category="Comparison", subcategory="{dataset}", labels={"comparison": "{name}", "figure": "{plot}"}),
    params:
        cfg=lambda w: section(compare_entry(w), P.normalise, P.evaluate),
    priority: PRIORITY["score"]
    log:
        "results/logs/compare/{dataset}/{name}.log",
    shell:
        "eqseg compare --params {PARAMS_FILE:q} --entry {wildcards.name:q} --out {output:q} > {log:q} 2>&1"
