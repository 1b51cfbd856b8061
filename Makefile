# One place for every routine task. Each target builds .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export OPENBLAS_NUM_THREADS := 1

.PHONY: install demo run test lint bench bench-faq bench-serving bench-delivery bench-surveys clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[semantic,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mobilize check
	$(BIN)/mobilize db upgrade
	$(BIN)/mobilize chat

run: $(STAMP)
	$(BIN)/mobilize run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: bench-faq bench-serving bench-delivery bench-surveys

bench-faq: $(STAMP)
	$(BIN)/python benchmarks/faq_matching.py --dataset all --kb all

bench-serving: $(STAMP)
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/dm_burst.py

bench-delivery: $(STAMP)
	$(BIN)/python benchmarks/audience_resolution.py
	$(BIN)/python benchmarks/delivery_fanout.py
	$(BIN)/python benchmarks/delivery_crash.py
	$(BIN)/python benchmarks/delivery_crash.py --platform teams --users 1000

bench-surveys: $(STAMP)
	$(BIN)/python benchmarks/survey_clicks.py
	$(BIN)/python benchmarks/survey_results.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache mobilize.db*
