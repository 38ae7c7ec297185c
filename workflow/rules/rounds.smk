# After round 1: the pseudo-label round (results/round2, config `pseudo`) and full-data refits
# (results/refit, config `refit`). Round 2 reuses round 1's rules with other paths. Switched off,
# each folder holds a note saying how to switch it on, so its DVC output always exists.


rule predict_folds:
    # Each fold model's own test predictions: fold k's pseudo-labels come from fold k's models only.
    input:
        folds=lambda wc: [fold_done(wc.model, k) for k in FOLDS],
        depth=lambda wc: depth_caches(wc.model, "test"),
        test=f"{DATA}/test.csv",
        code=code_of("src.predict"),
        photos=lambda wc: photos("test"),
    output:
        f"{RESULTS}/models/{{model}}/test_pred_folds.parquet",
    log:
        f"{RESULTS}/logs/predict_folds/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict_folds/{{model}}.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: config["train"]["threads"]
    resources:
        gpu=min(config["train"]["gpus"], 1),
    params:
        data=lambda wc, input: os.path.dirname(input.test),
        depth_dir=f"{RESULTS}/depth",
        out=lambda wc, output: os.path.dirname(output[0]),
        tta="--tta" if config["predict"]["tta"] else "--no-tta",
        scales=[f"{s:g}" for s in config["predict"]["tta_scales"]],
    shell:
        "OMP_NUM_THREADS={threads} python -m src.predict --model-dir {params.out:q} --data-dir {params.data:q} --split test "
        "--per-fold {params.tta} --tta-scales {params.scales:q} --depth-cache-dir {params.depth_dir:q} > {log:q} 2>&1"


rule pseudo_labels:
    input:
        weights=f"{RESULTS}/ensemble/weights.json",  # the refits' labels: the full-data choice
        folds=expand(f"{RESULTS}/models/{{model}}/test_pred_folds.parquet", model=MODELS),
        # fold k's labels: the ensemble's method and weights chosen again on the other folds' OOF rows
        oof=expand(f"{RESULTS}/models/{{model}}/oof.parquet", model=MODELS),
        test=f"{DATA}/test.csv",
        code=code_of("src.pseudo_labels"),
    output:
        expand(f"{ROUND2}/pseudo/fold{{k}}.csv", k=range(N_FOLDS)),
        all=f"{ROUND2}/pseudo/all.csv",  # the refits' (no OOF to protect): the full round-1 ensemble's
        summary=f"{ROUND2}/pseudo/summary.json",
    log:
        f"{RESULTS}/logs/pseudo_labels.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        data=lambda wc, input: os.path.dirname(input.test),
        keep=config["pseudo"]["keep_fraction"],
        n_folds=N_FOLDS,
        results=lambda wc, input: os.path.dirname(os.path.dirname(input.weights)),
        models=MODELS,
    shell:
        "python -m src.pseudo_labels make --results-dir {params.results:q} --models {params.models:q} --data-dir {params.data:q} "
        "--n-folds {params.n_folds} --keep-fraction {params.keep} > {log:q} 2>&1"


use rule train as train_round2 with:
    input:
        folds=FOLD_CSV,
        model_cfg=lambda wc: model_yaml(wc.model),
        backbone=lambda wc: pretrained_weights(wc.model),
        depth=lambda wc: depth_caches(wc.model, "train") + depth_caches(wc.model, "test"),
        images=lambda wc: image_cache(wc.model),
        pseudo=f"{ROUND2}/pseudo/fold{{fold}}.csv",
        code=code_of("src.dinov3_train"),
        photos=lambda wc: photos("train") + photos("test"),
    output:
        f"{ROUND2}/models/{{model}}/fold{{fold}}/metrics.json",
    log:
        f"{RESULTS}/logs/train_round2/{{model}}_fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_round2/{{model}}_fold{{fold}}.tsv"
    params:
        data=lambda wc: DATA,
        launcher=lambda wc, resources: launcher(resources.gpu),
        # not derived from input/output: Snakemake records only such params, and pseudo.weight is in here
        flags=lambda wc: pseudo_flags(wc.model, f"{ROUND2}/pseudo/fold{wc.fold}.csv"),
        out=lambda wc, output: os.path.dirname(os.path.dirname(output[0])),


use rule merge_oof as merge_oof_round2 with:
    input:
        lambda wc: [f"{ROUND2}/models/{wc.model}/fold{k}/metrics.json" for k in FOLDS],
        code=code_of("src.ensemble"),
    output:
        oof=f"{ROUND2}/models/{{model}}/oof.parquet",
        metrics=f"{ROUND2}/models/{{model}}/oof_metrics.json",
    log:
        f"{RESULTS}/logs/merge_oof_round2/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/merge_oof_round2/{{model}}.tsv"


use rule predict as predict_round2 with:
    input:
        folds=lambda wc: [f"{ROUND2}/models/{wc.model}/fold{k}/metrics.json" for k in FOLDS],
        depth=lambda wc: depth_caches(wc.model, "test"),
        test=f"{DATA}/test.csv",
        code=code_of("src.predict"),
        photos=lambda wc: photos("test"),
    output:
        pred=f"{ROUND2}/models/{{model}}/test_pred.parquet",
        sub=f"{ROUND2}/models/{{model}}/submission.csv",
    log:
        f"{RESULTS}/logs/predict_round2/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict_round2/{{model}}.tsv"


use rule ensemble as ensemble_round2 with:
    input:
        oof=expand(f"{ROUND2}/models/{{model}}/oof.parquet", model=MODELS),
        pred=expand(f"{ROUND2}/models/{{model}}/test_pred.parquet", model=MODELS),
        test=f"{DATA}/test.csv",
        code=code_of("src.ensemble"),
    output:
        sub=f"{ROUND2}/ensemble/submission.csv",
        oof=f"{ROUND2}/ensemble/oof.parquet",
        metrics=f"{ROUND2}/ensemble/oof_metrics.json",
        weights=f"{ROUND2}/ensemble/weights.json",
        pred=f"{ROUND2}/ensemble/test_pred.parquet",
    log:
        f"{RESULTS}/logs/ensemble_round2.log",
    benchmark:
        f"{RESULTS}/benchmarks/ensemble_round2.tsv"


rule round_blend:
    input:
        one=f"{RESULTS}/ensemble/oof.parquet",
        two=f"{ROUND2}/ensemble/oof.parquet",
        weights=f"{ROUND2}/ensemble/weights.json",
        code=code_of("src.pseudo_labels"),
    output:
        blend=f"{ROUND2}/blend.json",
        oof=f"{ROUND2}/blend/oof.parquet",
    log:
        f"{RESULTS}/logs/round_blend.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        results=lambda wc, input: os.path.dirname(os.path.dirname(input.one)),
    shell:
        "python -m src.pseudo_labels blend --results-dir {params.results:q} > {log:q} 2>&1"


rule refit:
    # The train rule's command without --folds: every image of the fold CSV, the epochs its folds chose.
    input:
        folds=FOLD_CSV,
        model_cfg=lambda wc: model_yaml(wc.model),
        backbone=lambda wc: pretrained_weights(wc.model),
        depth=lambda wc: depth_caches(wc.model, "train"),
        images=lambda wc: image_cache(wc.model),
        cv=lambda wc: [fold_done(wc.model, k) for k in FOLDS],  # their history.csv sets the epochs,
        code=code_of("src.dinov3_train"),
        photos=lambda wc: photos("train"),
    output:
        f"{RESULTS}/refit/{{model}}/full/metrics.json",
    log:
        f"{RESULTS}/logs/refit/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/refit/{{model}}.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: config["train"]["threads"]
    resources:
        gpu=config["train"]["gpus"],
    params:
        data=lambda wc: DATA,
        launcher=lambda wc, resources: launcher(resources.gpu),
        flags=lambda wc: trainer_flags(wc.model),
        cv=lambda wc: f"{RESULTS}/models/{wc.model}",
        out=lambda wc, output: os.path.dirname(os.path.dirname(output[0])),
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} -m src.dinov3_train --cpus {threads} --config {input.model_cfg:q} {params.flags:q} "
        "--data-dir {params.data:q} --fold-csv {input.folds:q} --refit-from {params.cv:q} --output-dir {params.out:q} --resume "
        "> {log:q} 2>&1"


rule refit_check:
    # The evidence for a refit: the refit procedure on fold k's training images only, for the epochs
    # the OTHER folds chose, no selection; its last weights predict fold k's validation images.
    input:
        folds=FOLD_CSV,
        model_cfg=lambda wc: model_yaml(wc.model),
        backbone=lambda wc: pretrained_weights(wc.model),
        depth=lambda wc: depth_caches(wc.model, "train"),
        images=lambda wc: image_cache(wc.model),
        cv=lambda wc: [fold_done(wc.model, k) for k in FOLDS if k != int(wc.fold)],  # their history.csv sets the epochs,
        code=code_of("src.dinov3_train"),
        photos=lambda wc: photos("train"),
    output:
        f"{RESULTS}/refit_check/{{model}}/fold{{fold}}/metrics.json",
    log:
        f"{RESULTS}/logs/refit_check/{{model}}_fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/refit_check/{{model}}_fold{{fold}}.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: config["train"]["threads"]
    resources:
        gpu=config["train"]["gpus"],
    params:
        data=lambda wc: DATA,
        launcher=lambda wc, resources: launcher(resources.gpu),
        flags=lambda wc: trainer_flags(wc.model),
        cv=lambda wc: f"{RESULTS}/models/{wc.model}",
        out=lambda wc, output: os.path.dirname(os.path.dirname(output[0])),
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} -m src.dinov3_train --cpus {threads} --config {input.model_cfg:q} {params.flags:q} "
        "--data-dir {params.data:q} --fold-csv {input.folds:q} --refit-from {params.cv:q} --folds {wildcards.fold} "
        "--output-dir {params.out:q} --resume > {log:q} 2>&1"


use rule merge_oof as merge_oof_refit_check with:
    input:
        lambda wc: [f"{RESULTS}/refit_check/{wc.model}/fold{k}/metrics.json" for k in FOLDS],
        code=code_of("src.ensemble"),
    output:
        oof=f"{RESULTS}/refit_check/{{model}}/oof.parquet",
        metrics=f"{RESULTS}/refit_check/{{model}}/oof_metrics.json",
    log:
        f"{RESULTS}/logs/merge_oof_refit_check/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/merge_oof_refit_check/{{model}}.tsv"


use rule predict as predict_refit with:
    input:
        folds=f"{RESULTS}/refit/{{model}}/full/metrics.json",
        depth=lambda wc: depth_caches(wc.model, "test"),
        test=f"{DATA}/test.csv",
        code=code_of("src.predict"),
        photos=lambda wc: photos("test"),
    output:
        pred=f"{RESULTS}/refit/{{model}}/test_pred.parquet",
        sub=f"{RESULTS}/refit/{{model}}/submission.csv",
    log:
        f"{RESULTS}/logs/predict_refit/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict_refit/{{model}}.tsv"


use rule refit as refit_round2 with:
    input:
        folds=FOLD_CSV,
        model_cfg=lambda wc: model_yaml(wc.model),
        backbone=lambda wc: pretrained_weights(wc.model),
        depth=lambda wc: depth_caches(wc.model, "train") + depth_caches(wc.model, "test"),
        images=lambda wc: image_cache(wc.model),
        cv=lambda wc: [f"{ROUND2}/models/{wc.model}/fold{k}/metrics.json" for k in FOLDS],
        pseudo=f"{ROUND2}/pseudo/all.csv",
        code=code_of("src.dinov3_train"),
        photos=lambda wc: photos("train") + photos("test"),
    output:
        f"{ROUND2}/refit/{{model}}/full/metrics.json",
    log:
        f"{RESULTS}/logs/refit_round2/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/refit_round2/{{model}}.tsv"
    params:
        data=lambda wc: DATA,
        launcher=lambda wc, resources: launcher(resources.gpu),
        flags=lambda wc: pseudo_flags(wc.model, f"{ROUND2}/pseudo/all.csv"),  # recorded: not from input
        cv=lambda wc: f"{ROUND2}/models/{wc.model}",
        out=lambda wc, output: os.path.dirname(os.path.dirname(output[0])),


use rule predict as predict_refit_round2 with:
    input:
        folds=f"{ROUND2}/refit/{{model}}/full/metrics.json",
        depth=lambda wc: depth_caches(wc.model, "test"),
        test=f"{DATA}/test.csv",
        code=code_of("src.predict"),
        photos=lambda wc: photos("test"),
    output:
        pred=f"{ROUND2}/refit/{{model}}/test_pred.parquet",
        sub=f"{ROUND2}/refit/{{model}}/submission.csv",
    log:
        f"{RESULTS}/logs/predict_refit_round2/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict_refit_round2/{{model}}.tsv"


rule step_off:
    # A switched-off step still has its folder (a DVC output), holding how to switch it on.
    output:
        f"{RESULTS}/{{step}}/OFF.txt",
    log:
        f"{RESULTS}/logs/step_off/{{step}}.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        how=lambda wc: {
            "round2": "pseudo: {enabled: true}",
            "refit": "refit: {use: true}",
            "refit_check": "refit: {use: true, evidence: true}",
            "pretrained": f"trainer_overrides: {{backbone_size: tiny, backbone_weights: {PRETRAINED}}}",
        }[wc.step],
    shell:
        "echo 'off in this run; to run it, set {params.how} in the config' > {output:q} 2> {log:q}"
