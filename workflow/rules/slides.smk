# Whole slides assembled from real tiles (params `slides:`) into data/<group>/, the input of the tile rule of the
# slide dataset of the same name.
import re

if P.slides:

    rule slides:
        input:
            lambda w: [P.slides[w.group].images, P.slides[w.group].masks],
        output:
            directory(paths.SLIDES),
        params:
            cfg=lambda w: section(P.slides[w.group]),
        wildcard_constraints:
            group="|".join(re.escape(g) for g in P.slides),
        log:
            "results/logs/slides/{group}.log",
        shell:
            "eqseg make-slides {wildcards.group} --params {PARAMS_FILE} --out {output} 2> {log}"
