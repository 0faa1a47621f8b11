"""Detectron's object-detection research platform, rebuilt on PyTorch."""

__version__ = "0.1.0"
