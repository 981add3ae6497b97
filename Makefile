# Every target creates .venv when missing and installs the project into it first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LMFORGE := $(VENV)/bin/lmforge
SHARED ?= ../shared/data
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench bench-data bench-train bench-generate clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	LMFORGE_SHARED_DATA=$(SHARED) $(PY) -m pytest -x -q

# The main job end to end on built-in defaults and the shared data.
demo: $(STAMP)
	SHARED=$(SHARED) bash scripts/demo.sh

bench: bench-data bench-train bench-generate

bench-data: $(STAMP)
	$(PY) benchmarks/bench_data.py --shared $(SHARED)
	$(PY) benchmarks/bench_tokenizer.py --shared $(SHARED)

bench-train: $(STAMP)
	$(PY) benchmarks/bench_train.py --shared $(SHARED)

bench-generate: $(STAMP)
	$(PY) benchmarks/bench_generate.py

clean:
	rm -rf runs bench-out
