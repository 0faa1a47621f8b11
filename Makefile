# `make test` and `make zoo` set up .venv on first use, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test zoo install build clean services

$(STAMP): pyproject.toml setup.py environment.post-deploy.sh $(wildcard kernels/*.cpp kernels/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	PATH="$(abspath $(VENV))/bin:$$PATH" sh environment.post-deploy.sh
	touch $(STAMP)

install: $(STAMP)

# Recompile kernels/ in place after editing them.
build: $(STAMP)
	$(PY) setup.py build_ext --inplace

test: $(STAMP) services
	$(VENV)/bin/pytest tests

# Debian's SLURM, munge and PostgreSQL for the slurm and tracking_server tests, installed when
# run as root (as CI runs); elsewhere those tests skip.
services:
	sh tests/install_services.sh

# Train, evaluate and tabulate every baseline of configs/zoo/shapes.yaml into MODEL_ZOO.md.
zoo: $(STAMP)
	$(VENV)/bin/snakemake --cores all --profile workflow/profiles/default reproduce_model_zoo

clean:
	rm -rf build detectron_lib/*.so
