# The submission: round 1's ensemble, blended with round 2 (config pseudo) and with its test
# predictions from the refits (config refit), then the OOF-fitted post-processing
# (ensemble/postprocess.json). final/recipe.json says what went in; final/steps.json holds the OOF
# and holdout scores with and without each step, which the report shows. With refit.evidence a
# model's refit is used only where its refit check beats its fold models (final/refit_evidence.json).


rule final:
    input:
        weights=f"{RESULTS}/ensemble/weights.json",
        oof=f"{RESULTS}/ensemble/oof.parquet",
        post=f"{RESULTS}/ensemble/postprocess.json",
        members=final_members(),
        evidence=refit_evidence_files(),  # refit_check/<model>/oof.parquet and models/<model>/oof.parquet
        test=f"{DATA}/test.csv",
        code=code_of("src.final"),
    output:
        sub=f"{RESULTS}/submission.csv",
        recipe=f"{RESULTS}/final/recipe.json",
        steps=f"{RESULTS}/final/steps.json",
        pred=f"{RESULTS}/final/test_pred.parquet",
        evidence=f"{RESULTS}/final/refit_evidence.json",
    log:
        f"{RESULTS}/logs/final.log",
    benchmark:
        f"{RESULTS}/benchmarks/final.tsv"
    conda:
        "../envs/pipeline.yaml"
    params:
        data=lambda wc, input: os.path.dirname(input.test),
        rounds=(["--round2"] if PSEUDO else [])
        + (["--refit"] if REFIT else [])
        + (["--no-refit-evidence"] if REFIT and not REFIT_EVIDENCE else []),
        tta="" if config["predict"]["tta"] else "--no-tta",
        scales=[f"{s:g}" for s in config["predict"]["tta_scales"]],
        results=lambda wc, output: os.path.dirname(output.sub),
    shell:
        "python -m src.final --results-dir {params.results:q} --data-dir {params.data:q} {params.rounds:q} {params.tta} "
        "--tta-scales {params.scales:q} > {log:q} 2>&1"
