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

demo: .venv/.installed
	$(PY) -m src.demo --data-dir $(DEMO_DIR)

test: .venv/.installed
	$(PY) -m pytest -q -m "not slow"

test-slow: .venv/.installed
	$(PY) -m pytest -q -m slow

lint: .venv/.installed
	$(PY) -m ruff check src tests

clean-demo:
	rm -rf $(DEMO_DIR) results/demo
