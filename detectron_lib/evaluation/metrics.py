"""Metrics files: the flat ``{"bbox/AP": 0.37, ...}`` dicts every evaluation writes.

Values are fractions in [0, 1]. A metric that is undefined (pycocotools reports -1 when an
area range or category has no ground truth) is NaN in memory and ``null`` in the file, so the
file stays strict JSON that any reader (the zoo table, MLflow, jq) accepts.
"""
import json
import math
import numbers

from detectron_lib.errors import DatasetError
from detectron_lib.utils.io import write_json_atomic


def _json_value(name, value):
    """One metric as a JSON-ready float, or None for NaN."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"metric '{name}' is {value!r} ({type(value).__name__}); expected a number")
    value = float(value)
    if math.isnan(value):
        return None
    if math.isinf(value):
        raise ValueError(f"metric '{name}' is infinite; metrics must be finite numbers or NaN")
    return value


def write_metrics(path, metrics):
    """Write ``metrics`` (name -> number) to ``path`` as JSON, atomically, keys sorted.

    NaN is written as ``null``; numpy scalars become plain floats. Nothing is written (and no
    temporary file is left) if a value is not a number.
    """
    document = {str(name): _json_value(name, value) for name, value in metrics.items()}
    write_json_atomic(path, document, sort_keys=True, indent=2, allow_nan=False)


def read_metrics(path):
    """Read a metrics file written by ``write_metrics``; ``null`` comes back as NaN."""
    try:
        with open(path) as f:
            document = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"metrics file not found: {path}; run the evaluation that writes it") from None
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"metrics file {path} is not valid JSON ({err}); delete it and re-run the evaluation"
        ) from None
    if not isinstance(document, dict):
        raise DatasetError(f"metrics file {path} must hold a JSON object of name -> number")
    metrics = {}
    for name, value in document.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise DatasetError(f"metrics file {path}: '{name}' is {value!r}; expected a number or null")
        metrics[name] = math.nan if value is None else float(value)
    return metrics
