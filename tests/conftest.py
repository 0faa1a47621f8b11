"""Shared fixtures: where the reference material lives, and small temporary data roots."""
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _reference_dir():
    env = os.environ.get("DETECTRON_REFERENCE_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir():
    """../shared/reference beside the checkout: Detectron's 87 configs and the demo photos."""
    path = _reference_dir()
    if not (path / "detectron_configs").is_dir():
        pytest.fail(f"reference material not found at {path}; set DETECTRON_REFERENCE_DIR")
    return path


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT
