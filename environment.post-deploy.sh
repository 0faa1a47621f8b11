#!/bin/sh
# Installs PyTorch, then the project with its dev extras, editable, into the active Python
# environment (`make` runs it for .venv; Snakemake after creating environment.yml's env). The
# kernels compile against the installed torch, so the build runs without isolation.
set -eu
python -m pip install "setuptools>=64" wheel ninja "torch>=2.1"
python -m pip install --no-build-isolation -e ".[dev]"
