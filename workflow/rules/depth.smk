# Depth Anything V2 caches, one per split and model size, built only for models that use depth.

if config["depth"]["model"] == "tiny":

    rule tiny_depth_model:
        input:
            code=code_of("src.depth_cache"),
        output:
            directory(TINY_DEPTH),
        log:
            f"{RESULTS}/logs/tiny_depth_model.log",
        benchmark:
            f"{RESULTS}/benchmarks/tiny_depth_model.tsv"
        conda:
            "../envs/pipeline.yaml"
        shell:
            "python -m src.depth_cache --make-tiny-model {output:q} > {log:q} 2>&1"


rule depth_cache:
    input:
        csv=f"{DATA}/{{split}}.csv",
        model=[TINY_DEPTH] if config["depth"]["model"] == "tiny" else [],
        code=code_of("src.depth_cache"),
        photos=lambda wc: photos(wc.split),
    output:
        # kept and versioned, as the image caches are (see data.smk)
        f"{RESULTS}/depth/{{size}}/{{split}}.safetensors",
    log:
        f"{RESULTS}/logs/depth/{{size}}_{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/depth/{{size}}_{{split}}.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: config["train"]["threads"]  # torch's threads when it runs on the CPU
    resources:
        gpu=config["depth"].get("gpus", 0),
    params:
        data=lambda wc, input: os.path.dirname(input.csv),
        model=lambda wc: depth_model(wc.size.split("_")[0]),
        d=config["depth"],
        size=lambda wc: wc.size.split("_")[0],
        prep=lambda wc: prep_flags(wc.size),
    shell:
        "OMP_NUM_THREADS={threads} python -m src.depth_cache --data-dir {params.data:q} --split {wildcards.split} --model-size {params.size} "
        "--model {params.model:q} --backend {params.d[backend]} --resolution {params.d[resolution]} "
        "--batch-size {params.d[batch_size]} {params.prep:q} --out {output:q} > {log:q} 2>&1"
