# Two entry points: `make demo` (set up, then run the main job) and `make test` (set up, then test).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
# TORCH_INDEX: a package index for torch alone, e.g. https://download.pytorch.org/whl/cpu for the
# CPU-only build (the default index's build carries CUDA libraries: about 3 GB more)
TORCH_INDEX ?=
BIN := $(VENV)/bin

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

demo: setup
	$(BIN)/pitscope demo --output-dir runs/demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
