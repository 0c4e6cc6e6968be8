# confusion.png and predictions.png in `snakemake --report`: category Evaluation, one subcategory per training set
# and test set, a row per cell (report() annotates, the paths stay those of dvc.yaml)
EVAL_REPORT = {"confusion.png": "confusion.rst", "predictions.png": "predictions.rst"}


def eval_file(name):
    path = f"{paths.EVAL}/{name}"
    if name not in EVAL_REPORT:
        return path
    return report(path, caption=f"../report/{EVAL_REPORT[name]}", category="Evaluation",
                  subcategory="{dataset} tested on {testset}",
                  labels={"model": "{model}", "supervision": "{supervision}", "variant": "{variant}",
                          "budget": "{budget} %", "seed": "{seed}", "figure": name.removesuffix(".png")})


rule evaluate:
    input:
        model=paths.MODEL,
        tiles=lambda w: paths.TILES.format(dataset=w.testset),
    output:
        [eval_file(name) for name in paths.EVAL_FILES],
    params:
        cfg=lambda w: section(P.evaluate, P.normalise, P.train.precision),
        out=paths.EVAL,
    priority: PRIORITY["score"]
    log:
        "results/logs/evaluate/" + paths.CELL + "/{testset}.log",
    shell:
        "eqseg evaluate --params {PARAMS_FILE:q} --model-dir {input.model:q} --tiles {input.tiles:q}"
        " --out {params.out:q} > {log:q} 2>&1"
