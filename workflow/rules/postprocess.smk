# Post-processing of the blend (shrink, zeroing, State rule, calibration), each kept only if nested CV on OOF says so.


rule postprocess:
    input:
        oof=blend_oof(),
        code=code_of("src.postprocess"),
    output:
        f"{RESULTS}/ensemble/postprocess.json",
    log:
        f"{RESULTS}/logs/postprocess.log",
    benchmark:
        f"{RESULTS}/benchmarks/postprocess.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "python -m src.postprocess --oof {input.oof:q} --out {output:q} > {log:q} 2>&1"
