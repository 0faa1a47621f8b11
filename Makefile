# `make test` and `make zoo` set up .venv on first use, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test zoo install build clean

$(STAMP): pyproject.toml setup.py environment.post-deploy.sh $(wildcard kernels/*.cpp kernels/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	PATH="$(abspath $(VENV))/bin:$$PATH" sh environment.post-deploy.sh
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
