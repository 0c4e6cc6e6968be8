# Whole slides assembled from real tiles (params `slides:`) into data/<group>/, the input of the tile rule of the
# slide dataset of the same name.
import re

if P.slides:

    rule slides:
        input:
            lambda w: slide_tiles(w.group),
        output:
            directory(paths.SLIDES),
        params:
            cfg=lambda w: section(P.slides[w.group]),
        wildcard_constraints:
            group="|".join(re.escape(g) for g in P.slides),
        priority: PRIORITY["prepare"]
        log:
            "results/logs/slides/{group}.log",
        shell:
            "eqseg make-slides {wildcards.group:q} --params {PARAMS_FILE:q} --out {output:q} > {log:q} 2>&1"
