# Plots and the model table (which phase of the guide won), also in `snakemake --report`.


rule report:
    input:
        oof=expand(f"{RESULTS}/models/{{model}}/oof_metrics.json", model=MODELS),
        ensemble=f"{RESULTS}/ensemble/oof_metrics.json",
        steps=f"{RESULTS}/final/steps.json",
        code=code_of("src.report"),
    output:
        table=f"{RESULTS}/report/model_table.csv",
        table_html=report(
            f"{RESULTS}/report/model_table.html",
            caption="../report/model_table.rst",
            category="Models",
            labels={"table": "models ranked by OOF weighted R²"},
        ),
        table_md=f"{RESULTS}/report/model_table.md",
        scatter=report(f"{RESULTS}/report/pred_vs_true.png", caption="../report/pred_vs_true.rst", category="OOF"),
        states=report(f"{RESULTS}/report/r2_by_state.png", caption="../report/r2_by_state.rst", category="OOF"),
        curves=report(
            f"{RESULTS}/report/learning_curves.png", caption="../report/learning_curves.rst", category="Training"
        ),
    log:
        f"{RESULTS}/logs/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report.tsv"
    conda:
        "../envs/pipeline.yaml"
    params:
        results=lambda wc, output: os.path.dirname(os.path.dirname(output.table)),
        report_dir=lambda wc, output: os.path.dirname(output.table),
        models=MODELS,
    shell:
        "MPLBACKEND=Agg python -m src.report --results-dir {params.results:q} --models {params.models:q} "
        "--out-dir {params.report_dir:q} > {log:q} 2>&1"


rule dvc_metrics:
    input:
        oof=expand(f"{RESULTS}/models/{{model}}/oof_metrics.json", model=MODELS),
        ensemble=f"{RESULTS}/ensemble/oof_metrics.json",
        steps=f"{RESULTS}/final/steps.json",
        code=code_of("src.dvc_metrics"),
    output:
        # dvc.yaml's metrics and plots (git keeps them): what `dvc exp show` and `dvc plots show` read
        scores=f"{RESULTS}/metrics/models.json",
        # files, not directory(): Snakemake would add its timestamp file to what git and DVC keep
        curves=expand(f"{RESULTS}/metrics/curves/{{model}}.csv", model=MODELS),
        scatter=expand(f"{RESULTS}/metrics/pred_vs_true/{{target}}.csv", target=TARGET_NAMES),
    log:
        f"{RESULTS}/logs/dvc_metrics.log",
    benchmark:
        f"{RESULTS}/benchmarks/dvc_metrics.tsv"
    conda:
        "../envs/pipeline.yaml"
    params:
        results=lambda wc, output: os.path.dirname(os.path.dirname(output.scores)),
        out=lambda wc, output: os.path.dirname(output.scores),
        models=MODELS,
    shell:
        "python -m src.dvc_metrics --results-dir {params.results:q} --models {params.models:q} --out-dir {params.out:q} "
        "> {log:q} 2>&1"
