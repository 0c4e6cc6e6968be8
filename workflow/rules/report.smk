# `snakemake --report report.html`: the study's plots and tables, the training curves of every cell (train.smk), its
# confusion matrices and predictions (evaluate.smk) and the comparisons' heat maps (compare.smk), each with a caption
# from workflow/report/. report() only annotates an output: its path stays the one dvc.yaml declares.
STUDY_REPORT = {  # file -> (subcategory, caption); the others (cells.parquet) are not shown
    "miou.png": ("Plots", "miou.rst"),
    "budget.png": ("Plots", "budget.rst"),
    "external.png": ("Plots", "external.rst"),
    "equivariance.png": ("Plots", "equivariance.rst"),
    "summary.csv": ("Tables", "summary.rst"),
    "cells.csv": ("Tables", "cells.rst"),
    "distill.csv": ("Tables", "distill.rst"),
    "modes.csv": ("Tables", "modes.rst"),
    "modes_pooled.csv": ("Tables", "modes_pooled.rst"),
    "report.md": ("Tables", "report_md.rst"),
}


def report_file(name):
    path = f"{paths.REPORT}/{name}"
    if name not in STUDY_REPORT:
        return path
    subcategory, caption = STUDY_REPORT[name]
    return report(path, caption=f"../report/{caption}", category="Study", subcategory=subcategory,
                  labels={"file": name})


rule report:
    input:
        grid_outputs(paths.EVAL + "/metrics.json"),
        [paths.DIGITS.format(model=m, seed=s) + "/metrics.json" for m in P.digits.models for s in P.digits.seeds],
    output:
        [report_file(name) for name in paths.REPORT_FILES],
    log:
        "results/logs/report.log",
    shell:
        "eqseg report --params {PARAMS_FILE:q} --out {paths.REPORT:q} > {log:q} 2>&1"
