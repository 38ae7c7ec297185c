# Data: the demo's synthetic Kaggle-format dataset (demo configs only) and the fold CSV.

if "demo_data" in config:

    # A checkpoint: the photos it makes are the inputs of the rules that read them (common.smk's
    # photos()), known only once it has run; Snakemake then re-evaluates those inputs, so the first
    # run records the same input set as every later one.
    checkpoint demo_data:
        input:
            code=code_of("src.synth"),
        output:
            train=f"{DATA}/train.csv",
            test=f"{DATA}/test.csv",
            sample=f"{DATA}/sample_submission.csv",
            solution=f"{DATA}/test_solution.csv",
        log:
            f"{RESULTS}/logs/demo_data.log",
        benchmark:
            f"{RESULTS}/benchmarks/demo_data.tsv"
        conda:
            "../envs/pipeline.yaml"
        params:
            data=lambda wc, output: os.path.dirname(output.train),
            d=config.get("demo_data", {}),
        shell:
            "python -m src.synth --out {params.data:q} --n-train {params.d[n_train]} --n-test {params.d[n_test]} "
            "--seed {params.d[seed]} --width {params.d[width]} --height {params.d[height]} > {log:q} 2>&1"


rule image_cache:
    input:
        f"{DATA}/{{split}}.csv",
        code=code_of("src.image_cache"),
        photos=lambda wc: photos(wc.split),
    output:
        # Kept, not temp(): a cache rebuilt for a model added later would make every model that read
        # it retrain ("input updated by another job"). dvc.yaml versions it with the models.
        npy=f"{RESULTS}/cache/images/{{res}}/{{split}}.npy",
        meta=f"{RESULTS}/cache/images/{{res}}/{{split}}.json",
    log:
        f"{RESULTS}/logs/image_cache/{{res}}_{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/image_cache/{{res}}_{{split}}.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1  # one process decodes the photos in turn
    params:
        data=lambda wc, input: os.path.dirname(input[0]),
        size=lambda wc: wc.res.split("_")[0],
        pad=lambda wc: "--pad-to-square" if "_pad" in wc.res else "",
        prep=lambda wc: prep_flags(wc.res),
    shell:
        "python -m src.image_cache --data-dir {params.data:q} --split {wildcards.split} --size {params.size} "
        "{params.pad} {params.prep:q} --out {output.npy:q} > {log:q} 2>&1"


rule folds:
    input:
        f"{DATA}/train.csv",
        code=code_of("src.make_folds"),
    output:
        FOLD_CSV,
    log:
        f"{RESULTS}/logs/folds.log",
    benchmark:
        f"{RESULTS}/benchmarks/folds.tsv"
    conda:
        "../envs/pipeline.yaml"
    params:
        data=lambda wc, input: os.path.dirname(input[0]),
        f=config["folds"],
    shell:
        "python -m src.make_folds --data-dir {params.data:q} --out {output:q} --n-folds {params.f[n_folds]} "
        "--cv-strategy {params.f[strategy]} --seed {params.f[seed]} > {log:q} 2>&1"
