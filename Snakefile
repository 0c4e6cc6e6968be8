# eqseg workflow: tile -> train -> evaluate over the grid in params.yaml (or the file given with --configfile).
# Rules only call the `eqseg` CLI; the same commands and output paths appear in dvc.yaml.
import sys

from eqseg.config import load_params
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


include: "workflow/rules/common.smk"
include: "workflow/rules/slides.smk"
include: "workflow/rules/tile.smk"
include: "workflow/rules/weak.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/digits.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.report.output,
        grid_outputs(paths.PREDICT),
