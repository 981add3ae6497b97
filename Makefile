# Every target creates .venv when missing and installs the project into it first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LMFORGE := $(VENV)/bin/lmforge
SHARED ?= ../shared/data
STAMP := $(VENV)/.installed
CHROMIUM ?= /usr/bin/chromium

.PHONY: install demo test lint browser bench bench-data bench-train bench-generate bench-finetune bench-export bench-serve bench-compress bench-pipeline clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Headless Chromium (Debian's package) for the dashboard's browser tests, which Playwright drives: installed
# with apt-get when missing and apt-get is usable; if it cannot be, those tests skip and say why.
browser:
	@if [ ! -x $(CHROMIUM) ] && command -v apt-get >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  echo "installing chromium for the browser tests (apt-get)"; \
	  ( $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null ) \
	  || echo "note: chromium could not be installed; the browser tests will be skipped"; \
	fi

test: $(STAMP) browser
	$(VENV)/bin/ruff check .
	LMFORGE_SHARED_DATA=$(SHARED) $(PY) -m pytest -x -q

# The main job end to end on built-in defaults and the shared data.
demo: $(STAMP)
	SHARED=$(SHARED) bash scripts/demo.sh

bench: bench-data bench-train bench-generate bench-finetune bench-export bench-serve bench-compress bench-pipeline

bench-data: $(STAMP)
	$(PY) benchmarks/bench_data.py --shared $(SHARED)
	$(PY) benchmarks/bench_tokenizer.py --shared $(SHARED)

bench-train: $(STAMP)
	$(PY) benchmarks/bench_train.py --shared $(SHARED)

bench-generate: $(STAMP)
	$(PY) -u benchmarks/bench_generate.py

# ONNX Runtime (fp32, int8) against PyTorch eager on a ~10M model: forward latency, decode, file sizes
bench-export: $(STAMP)
	$(PY) benchmarks/bench_onnx.py $(BENCH_EXPORT_ARGS)

# Every part (SST-2 from scratch and with MiniLM, ChnSentiCorp, Multi30K, LoRA memory): about two hours on
# 2 cores; one part: BENCH_FINETUNE_ARGS="--part sst2-minilm".
bench-finetune: $(STAMP)
	$(PY) benchmarks/bench_finetune.py --shared $(SHARED) $(BENCH_FINETUNE_ARGS)

# `lmforge serve` on a ~10M model (random weights): tokens/s and latency at 1, 4 and 16 concurrent clients
bench-serve: $(STAMP)
	$(PY) benchmarks/bench_serve.py --shared $(SHARED) $(BENCH_SERVE_ARGS)

# int8 (torchao weight-only, dynamic; onnxruntime) on a GPT-2-small-shaped model briefly trained on
# tinyshakespeare; distillation and pruning on small models. Reuses bench-out/compress (delete it to retrain).
bench-compress: $(STAMP)
	$(PY) benchmarks/bench_compress.py --shared $(SHARED) $(BENCH_COMPRESS_ARGS)

# Five stages by hand vs as one `lmforge pipeline`: cold, cached, and after a change to pretraining.
bench-pipeline: $(STAMP)
	$(PY) benchmarks/bench_pipeline.py --shared $(SHARED) $(BENCH_PIPELINE_ARGS)

clean:
	rm -rf runs bench-out
