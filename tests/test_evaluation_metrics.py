"""Metrics files: atomic, sorted, strict JSON with NaN as null (checked with the json module)."""
import json
import math

import numpy as np
import pytest

from detectron_lib.errors import DatasetError
from detectron_lib.evaluation import read_metrics, write_metrics


def test_metrics_json_is_sorted_with_nan_as_null_and_no_temp_file(tmp_path):
    path = tmp_path / "out" / "metrics.json"
    write_metrics(path, {"segm/AP": np.float32(0.25), "bbox/APs": float("nan"), "bbox/AP": 0.5})
    text = path.read_text()
    # Strict JSON: the standard parser refuses NaN literals when asked to.
    document = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))
    assert document == {"bbox/AP": 0.5, "bbox/APs": None, "segm/AP": 0.25}
    assert list(document) == ["bbox/AP", "bbox/APs", "segm/AP"]  # keys sorted in the file
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]
    metrics = read_metrics(path)
    assert metrics["bbox/AP"] == 0.5 and math.isnan(metrics["bbox/APs"])


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_metrics(path, {"bbox/AP": 0.5})
    with pytest.raises(TypeError, match="bbox/AP50"):
        write_metrics(path, {"bbox/AP": 0.7, "bbox/AP50": "high"})
    with pytest.raises(ValueError, match="infinite"):
        write_metrics(path, {"bbox/AP": float("inf")})
    assert json.loads(path.read_text()) == {"bbox/AP": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_reading_a_missing_or_corrupt_metrics_file_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_metrics(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"bbox/AP": ')
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_metrics(tmp_path / "bad.json")
