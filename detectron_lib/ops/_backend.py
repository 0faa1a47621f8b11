"""Loads the compiled kernels and selects which implementation the ops run.

Two backends: "compiled" (the C++ kernels of kernels/, registered as torch.ops.detectron,
the default) and "reference" (the pure-PyTorch implementations of reference.py: slow,
for checking and for machines where the kernels did not build). The environment variable
DETECTRON_OPS sets the initial backend; set_backend changes it at run time. CUDA tensors
always go to torchvision's CUDA kernels, whatever the backend.
"""
import os
import warnings

from detectron_lib.errors import ConfigError

BACKENDS = ("compiled", "reference")
_ENV_VAR = "DETECTRON_OPS"

try:
    from detectron_lib import _C  # noqa: F401  (importing registers torch.ops.detectron)

    KERNELS_ERROR = None
except ImportError as exc:
    KERNELS_ERROR = exc

_MISSING_KERNELS = (
    "the compiled kernels are not built: run `make build` (or pip install -e .) in the "
    "repository root, with a C++ compiler installed"
)


def _initial_backend():
    name = os.environ.get(_ENV_VAR, "compiled").strip().lower()
    if name not in BACKENDS:
        raise ConfigError(
            f"environment variable {_ENV_VAR}={name!r} is not a known ops backend; "
            f"use one of {', '.join(BACKENDS)}"
        )
    if name == "compiled" and KERNELS_ERROR is not None:
        warnings.warn(
            f"{_MISSING_KERNELS} ({KERNELS_ERROR}); detectron_lib.ops falls back to the "
            f"slow pure-PyTorch reference implementations (set {_ENV_VAR}=reference to "
            "silence this warning)",
            RuntimeWarning,
            stacklevel=3,
        )
        return "reference"
    return name


_backend = _initial_backend()


def set_backend(name):
    """Selects "compiled" (C++ kernels) or "reference" (pure PyTorch) for CPU tensors."""
    global _backend
    if name not in BACKENDS:
        raise ConfigError(f"unknown ops backend {name!r}; use one of {', '.join(BACKENDS)}")
    if name == "compiled" and KERNELS_ERROR is not None:
        raise ConfigError(f"cannot select the compiled ops backend: {_MISSING_KERNELS} ({KERNELS_ERROR})")
    _backend = name


def get_backend():
    """The backend CPU tensors use now: "compiled" or "reference"."""
    return _backend


def use_kernels():
    """True when CPU tensors go to torch.ops.detectron."""
    return _backend == "compiled"
