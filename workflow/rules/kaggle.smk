# The offline Kaggle dataset of the final submission: the recipe's models, the depth model, the
# project's wheel and the dependency wheels (<venv>/wheels, from `make .venv/.installed`), infer.py.
# The recipe names its members only at run time: the rule waits for every model's folds instead.


rule kaggle_package:
    input:
        recipe=f"{RESULTS}/final/recipe.json",
        sub=f"{RESULTS}/submission.csv",
        folds=[fold_done(m, k) for m in MODELS for k in FOLDS],
        reqs=os.path.relpath(REPO / "pyproject.toml"),  # the requirements, whose wheels it carries
        code=code_of("src.kaggle_package"),
    output:
        directory(f"{RESULTS}/kaggle"),
    log:
        f"{RESULTS}/logs/kaggle_package.log",
    benchmark:
        f"{RESULTS}/benchmarks/kaggle_package.tsv"
    conda:
        "../envs/pipeline.yaml"
    params:
        results=lambda wc, input: os.path.dirname(input.sub),
        # config kaggle: {username, slug} of the dataset id; no username: $KAGGLE_USERNAME, else a placeholder
        flags=[
            word
            for flag, key in (("--kaggle-user", "username"), ("--slug", "slug"))
            if config.get("kaggle", {}).get(key)
            for word in (flag, config["kaggle"][key])
        ],
    shell:
        "python -m src.kaggle_package --results-dir {params.results:q} --out {output:q} {params.flags:q} > {log:q} 2>&1"
