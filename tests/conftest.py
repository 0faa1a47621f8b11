"""Shared fixtures: where the reference material lives, and small temporary data roots."""
import os
from pathlib import Path

import pytest
import torch
import yaml

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


@pytest.fixture(scope="session", autouse=True)
def tracking_store(tmp_path_factory):
    """The suite's trainings track to an MLflow store of their own (`detectron train` tracks
    by default), not to results/mlflow.db of the checkout; its URI."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """12 generated shapes images registered as 'tiny_shapes' through a catalog YAML (one per
    session: the dataset catalog of a process keeps one definition per name)."""
    from detectron_lib.data.shapes import generate_shapes_dataset

    root = tmp_path_factory.mktemp("tiny_data")
    annotations = generate_shapes_dataset(root / "tiny", num_images=12, seed=11, workers=1)
    catalog = root / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"tiny_shapes": {
        "annotation_file": str(annotations), "image_directory": str(annotations.parent / "images")}}))
    return catalog



def noise_images(model, sizes, seed=None):
    """[(3, h, w) float] images of ``sizes`` that ``model``'s io normalizes to standard normal
    noise (pixel means plus noise times stds; seeded by ``seed`` or the global generator)."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    means = torch.tensor(model.io.pixel_means).view(3, 1, 1)
    stds = torch.tensor(model.io.pixel_stds).view(3, 1, 1)
    if model.io.channel_order == "RGB":
        means, stds = means.flip(0), stds.flip(0)
    return [torch.randn(3, h, w, generator=generator) * stds + means for h, w in sizes]
