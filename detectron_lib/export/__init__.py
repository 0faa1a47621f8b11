"""Exporting detectors to other runtimes: ONNX (export.onnx)."""
