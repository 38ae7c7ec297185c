# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv from requirements.txt the first time (about 2-3 minutes, ~6.5 GB).
SHELL := /bin/bash
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export DVC_NO_ANALYTICS := 1
DEMO_DIR := data/demo

.PHONY: demo test test-slow lint clean-demo

.venv/.installed: requirements.txt
	@test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

# The main job on the demo data: data -> folds -> 5-fold tiny model -> test submission -> holdout score.
# Each step is a file target, so a re-run skips what is done; --resume continues a killed training.
DEMO_MODEL := results/demo/models/demo_tiny

$(DEMO_DIR)/train.csv: | .venv/.installed
	$(PY) -m src.synth --out $(DEMO_DIR) --n-train 120 --n-test 30 --seed 0

$(DEMO_DIR)/trainfold_group_location.csv: $(DEMO_DIR)/train.csv
	$(PY) -m src.make_folds --data-dir $(DEMO_DIR) --out $@ --n-folds 5 --cv-strategy group_location --seed 42

$(DEMO_MODEL)/oof_metrics.json: $(DEMO_DIR)/trainfold_group_location.csv config/models/demo_tiny.yaml
	$(PY) -m src.dinov3_train --config config/models/demo_tiny.yaml --data-dir $(DEMO_DIR) --fold-csv $< \
		--output-dir $(DEMO_MODEL) --resume

$(DEMO_MODEL)/submission.csv: $(DEMO_MODEL)/oof_metrics.json
	$(PY) -m src.predict --model-dir $(DEMO_MODEL) --data-dir $(DEMO_DIR) --split test

demo: $(DEMO_MODEL)/submission.csv
	$(PY) -m src.score --submission $< --solution $(DEMO_DIR)/test_solution.csv

test: .venv/.installed
	$(PY) -m pytest -q -m "not slow"

test-slow: .venv/.installed
	$(PY) -m pytest -q -m slow

lint: .venv/.installed
	$(PY) -m ruff check src tests

clean-demo:
	rm -rf $(DEMO_DIR) results/demo
