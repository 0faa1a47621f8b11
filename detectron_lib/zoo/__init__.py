"""The model zoo: manifests of baselines (``manifest``), the DAG's jobs run as ``detectron zoo
STEP`` (``steps``) and the MODEL_ZOO.md table rendered from the files they produced
(``table``)."""
