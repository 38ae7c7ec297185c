# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv from requirements.txt the first time (about 2-3 minutes, ~6.5 GB).
SHELL := /bin/bash
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export DVC_NO_ANALYTICS := 1
export PATH := $(CURDIR)/.venv/bin:$(PATH)
DEMO_DIR := data/demo

.PHONY: demo test test-slow lint bench gpu-check clean-demo mutation slurm-acceptance

# .venv/wheels: the dependency wheels of the offline Kaggle package (src.kaggle_package, src/packaging/): what a
# Kaggle image may lack, at this venv's versions, for each CPython an image may run (src.kaggle_wheels).
# .venv/kaggle-standin: an older transformers, as a Kaggle image has it, for the package's install test.
# Downloaded once here because the build and its tests run without network.
.venv/.installed: requirements.txt pyproject.toml
	@test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -qq --disable-pip-version-check -r requirements.txt
	$(PY) -m src.kaggle_wheels --out .venv/wheels
	$(PY) -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d .venv/kaggle-standin \
		transformers==4.57.1 huggingface-hub==0.36.2 tokenizers==0.22.2
	@touch $@

# The main job: the Snakemake pipeline on the embedded demo data (config/demo.yaml), then its
# HTML report. Snakemake skips what is done and resumes a killed run (profiles/default).
DEMO_RESULTS := results/demo

demo: .venv/.installed
	snakemake --configfile config/demo.yaml
	snakemake --configfile config/demo.yaml --report $(DEMO_RESULTS)/report.html
	@cat $(DEMO_RESULTS)/report/model_table.md
	@python -c "import json; h = json.load(open('$(DEMO_RESULTS)/ensemble/holdout.json')); \
		f = json.load(open('$(DEMO_RESULTS)/final/steps.json')); \
		print(f\"holdout weighted_r2 on the demo's hidden test truth: round-1 ensemble {h['weighted_r2']:.4f}, \" \
		      f\"submission {f['holdout_weighted_r2']:.4f}\")"
	@echo "submission: $(DEMO_RESULTS)/submission.csv; Kaggle package: $(DEMO_RESULTS)/kaggle/"
	@echo "report: $(DEMO_RESULTS)/report.html (plots in $(DEMO_RESULTS)/report/)"

test: .venv/.installed
	python -m pytest -q -m "not slow" -n auto --maxprocesses 4

test-slow: .venv/.installed
	python -m pytest -q -m slow -n auto --maxprocesses 4

lint: .venv/.installed
	python -m ruff check src tests benchmarks
	snakefmt --check workflow/
	snakemake --lint --configfile config/test.yaml

clean-demo:
	rm -rf $(DEMO_DIR) $(DEMO_RESULTS)

# Speed benchmarks (not tests): JSON in benchmarks/results/ and a table.
bench: .venv/.installed
	python -m benchmarks.run

# One GPU check of the CUDA paths, under 8 minutes (benchmarks/results/gpu_check.json); without CUDA it says so and exits 0.
gpu-check: .venv/.installed
	python -m benchmarks.gpu_check

# Mutation check of the guide's flags: each flag's effect is removed in turn and a test guarding
# it must fail (tests/mutation/check.py; about 15 minutes here). Table: benchmarks/results/.
mutation: .venv/.installed
	python tests/mutation/check.py

# SLURM acceptance run (as root, Debian; not part of `make test`): a real one-node SLURM cluster
# on this machine for the run only, the demo through profiles/slurm (a few minutes here).
# Wall time, job counts and partitions: benchmarks/results/slurm_acceptance.md.
slurm-acceptance: .venv/.installed
	bash tests/slurm/acceptance.sh
