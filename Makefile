# Set-up and the two commands the README promises. TORCH pins the tested torch build: on the machines here
# `torch==2.13.0` is the CPU wheel lying on disk; any other spelling may pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean figures

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,lmeval,ray,submitit,tracking]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mechunlearn demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# The publication figures of a study's outputs (PDF, SVG, PNG): make figures OUT=outputs/micro
OUT ?= outputs/default
figures: $(STAMP)
	$(BIN)/mechunlearn figures $(OUT)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
