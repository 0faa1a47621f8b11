"""The model zoo: manifests of baselines (``manifest``) and the MODEL_ZOO.md table rendered
from the metrics files the DAG produced (``table``)."""
