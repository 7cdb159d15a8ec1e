# Set-up and everyday commands. Each target creates .venv and installs what it needs on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# JupyterLab refuses to run as root unless told; containers and CI machines often run as root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: lab test demo system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

system-deps:
	bash scripts/system-deps.sh

lab: $(STAMP)
	bash scripts/system-deps.sh postgres
	$(BIN)/jupyter lab --ip 127.0.0.1 --notebook-dir notebooks --ServerApp.open_browser=False $(ROOT_FLAG)

test: $(STAMP) system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	bash scripts/system-deps.sh postgres
	$(BIN)/python -m homunculy_nb.demo

clean:
	rm -rf $(VENV) .pytest_cache
