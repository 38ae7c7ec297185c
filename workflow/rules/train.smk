# One model x one fold per job (torchrun when the job has several GPUs), then the per-model OOF
# merge and the test predictions of all its folds. metrics.json is the fold's completion marker:
# the other fold files are not declared, so a killed job keeps last.* and resumes (--resume).


rule train:
    input:
        folds=FOLD_CSV,
        model_cfg=lambda wc: model_yaml(wc.model),
        backbone=lambda wc: pretrained_weights(wc.model),
        depth=lambda wc: depth_caches(wc.model, "train"),
        images=lambda wc: image_cache(wc.model),
        code=code_of("src.dinov3_train"),
        photos=lambda wc: photos("train"),
    output:
        f"{RESULTS}/models/{{model}}/fold{{fold}}/metrics.json",
    log:
        f"{RESULTS}/logs/train/{{model}}_fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}_fold{{fold}}.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: config["train"]["threads"]
    resources:
        gpu=config["train"]["gpus"],  # runtime and mem_mb: the profiles' set-resources
    params:
        data=lambda wc: DATA,
        launcher=lambda wc, resources: launcher(resources.gpu),  # gpu as scaled to the machine
        flags=lambda wc: trainer_flags(wc.model),
        out=lambda wc, output: os.path.dirname(os.path.dirname(output[0])),
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} -m src.dinov3_train --cpus {threads} --config {input.model_cfg:q} {params.flags:q} "
        "--data-dir {params.data:q} --fold-csv {input.folds:q} --folds {wildcards.fold} --output-dir {params.out:q} "
        "--resume > {log:q} 2>&1"


rule merge_oof:
    input:
        lambda wc: [fold_done(wc.model, k) for k in FOLDS],
        code=code_of("src.ensemble"),
    output:
        oof=f"{RESULTS}/models/{{model}}/oof.parquet",
        metrics=f"{RESULTS}/models/{{model}}/oof_metrics.json",
    log:
        f"{RESULTS}/logs/merge_oof/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/merge_oof/{{model}}.tsv"
    conda:
        "../envs/pipeline.yaml"
    params:
        n_folds=N_FOLDS,
        out=lambda wc, output: os.path.dirname(output.oof),
    shell:
        "python -m src.ensemble merge-oof --model-dir {params.out:q} --n-folds {params.n_folds} > {log:q} 2>&1"


rule predict:
    input:
        folds=lambda wc: [fold_done(wc.model, k) for k in FOLDS],
        depth=lambda wc: depth_caches(wc.model, "test"),
        test=f"{DATA}/test.csv",
        code=code_of("src.predict"),
        photos=lambda wc: photos("test"),
    output:
        pred=f"{RESULTS}/models/{{model}}/test_pred.parquet",
        sub=f"{RESULTS}/models/{{model}}/submission.csv",
    log:
        f"{RESULTS}/logs/predict/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{{model}}.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: config["train"]["threads"]
    resources:
        gpu=min(config["train"]["gpus"], 1),
    params:
        data=lambda wc, input: os.path.dirname(input.test),
        depth_dir=lambda wc: f"{RESULTS}/depth",
        out=lambda wc, output: os.path.dirname(output.pred),
        tta="--tta" if config["predict"]["tta"] else "--no-tta",
        scales=[f"{s:g}" for s in config["predict"]["tta_scales"]],
    shell:
        "OMP_NUM_THREADS={threads} python -m src.predict --model-dir {params.out:q} --data-dir {params.data:q} --split test "
        "{params.tta} --tta-scales {params.scales:q} --depth-cache-dir {params.depth_dir:q} > {log:q} 2>&1"
