# The ensemble: plain mean (the guide's) vs OOF-fitted non-negative weights, the better kept.


rule ensemble:
    input:
        oof=expand(f"{RESULTS}/models/{{model}}/oof.parquet", model=MODELS),
        pred=expand(f"{RESULTS}/models/{{model}}/test_pred.parquet", model=MODELS),
        test=f"{DATA}/test.csv",
        code=code_of("src.ensemble"),
    output:
        sub=f"{RESULTS}/ensemble/submission.csv",
        oof=f"{RESULTS}/ensemble/oof.parquet",
        metrics=f"{RESULTS}/ensemble/oof_metrics.json",
        weights=f"{RESULTS}/ensemble/weights.json",
        pred=f"{RESULTS}/ensemble/test_pred.parquet",
    log:
        f"{RESULTS}/logs/ensemble.log",
    benchmark:
        f"{RESULTS}/benchmarks/ensemble.tsv"
    conda:
        "../envs/pipeline.yaml"
    params:
        data=lambda wc, input: os.path.dirname(input.test),
        results=lambda wc, output: os.path.dirname(os.path.dirname(output.sub)),
        models=MODELS,
    shell:
        "python -m src.ensemble blend --results-dir {params.results:q} --models {params.models:q} --data-dir {params.data:q} > {log:q} 2>&1"
