# The two commands a newcomer needs (see README):
#   make demo   set up a virtual environment and run the demo comparison + report (offline, ~10 min on 2 cores)
#   make test   set up the same environment and run the default test suite (~10 min on 2 cores)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-slow lm-compare bench clean

$(BIN)/peftlab: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0      # pinned: a looser range pulls GBs of CUDA wheels on CPU machines
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/peftlab

demo: setup
	$(BIN)/peftlab data prepare smollm2-135m-instruct sentiment
	$(BIN)/peftlab sweep configs/demo.yaml --report reports/demo
	@echo "open reports/demo/report.html"

lm-compare: setup
	$(BIN)/peftlab run configs/lm-compare.yaml

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/generate_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
