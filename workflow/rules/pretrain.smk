# The demo's pre-trained backbone: src.pretrain_backbone's label-free pre-training of the tiny
# DINOv3-shaped ViT on synthetic photos of another seed, checked disjoint from the data's photos
# (--exclude). Made only when a model's backbone_weights names it (common.smk: pretrained_weights);
# its photos live in a temporary folder, never in the data folder, git or DVC.


rule pretrain_backbone:
    input:
        train=f"{DATA}/train.csv",  # its photos must not be among the pre-training photos
        code=code_of("src.pretrain_backbone"),
    output:
        PRETRAINED,
    log:
        f"{RESULTS}/logs/pretrain_backbone.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain_backbone.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: config["train"]["threads"]
    params:
        data=lambda wc: DATA,
        # not derived from input/output: Snakemake records these, so a changed setting remakes the file
        p=config["pretrain"],
    shell:
        "photos=$(mktemp -d) && trap 'rm -rf \"$photos\"' EXIT && "
        "OMP_NUM_THREADS={threads} python -m src.pretrain_backbone --out {output:q} --image-size {params.p[image_size]} "
        '--photos {params.p[photos]} --seed {params.p[seed]} --epochs {params.p[epochs]} --photo-root "$photos" '
        "--exclude {params.data:q} > {log:q} 2>&1"
