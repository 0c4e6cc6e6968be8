# eqseg workflow: tile -> train -> evaluate over the grid in params.yaml (or the file given with --configfile).
# Rules only call the `eqseg` CLI; the same commands and output paths appear in dvc.yaml. Every wildcard, param and
# path in a shell command is quoted ({...:q}), every log takes the command's stdout and stderr.
import sys

from eqseg.config import NAME_PATTERN, SUPERVISION_PATTERN, VARIANTS, load_params
from eqseg.errors import EqsegError
from eqseg import paths

_given = list(workflow.overwrite_configfiles)
if len(_given) > 1:
    raise ValueError("give one --configfile (a complete params file); eqseg does not merge several")
PARAMS_FILE = str(_given[0]) if _given else "params.yaml"
try:
    P = load_params(PARAMS_FILE)  # validated once, with one-line errors for bad values
except EqsegError as err:
    sys.exit(f"eqseg: error: {err}")

# Names become path components: one path segment of safe characters, never "/" or shell syntax (eqseg.config
# checks them, ".." included, when it loads params; these are its patterns).
wildcard_constraints:
    dataset=NAME_PATTERN,
    model=NAME_PATTERN,
    supervision=SUPERVISION_PATTERN,
    group=NAME_PATTERN,
    testset=NAME_PATTERN,
    name=NAME_PATTERN,
    variant="|".join(VARIANTS),
    budget=r"\d+",
    seed=r"\d+",


# `snakemake --report report.html` (after a run): this text, then the outputs the rules mark with report()
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/slides.smk"
include: "workflow/rules/tile.smk"
include: "workflow/rules/weak.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/digits.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.report.output,
        grid_outputs(paths.PREDICT),
        compare_outputs(),
