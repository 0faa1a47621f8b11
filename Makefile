# `make test` and `make zoo` set up .venv on first use, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test zoo install build clean

$(STAMP): pyproject.toml setup.py $(wildcard kernels/*.cpp kernels/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# The kernels compile against the installed torch, so the build requirements of
	# pyproject.toml go in first and the package builds without isolation.
	$(PY) -m pip install "setuptools>=64" wheel ninja "torch>=2.1"
	$(PY) -m pip install --no-build-isolation -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Recompile kernels/ in place after editing them.
build: $(STAMP)
	$(PY) setup.py build_ext --inplace

test: $(STAMP)
	$(VENV)/bin/pytest tests

# Train, evaluate and tabulate every baseline of configs/zoo/shapes.yaml into MODEL_ZOO.md.
zoo: $(STAMP)
	$(VENV)/bin/snakemake --cores all --profile workflow/profiles/default reproduce_model_zoo

clean:
	rm -rf build detectron_lib/*.so
