"""MLflow tracking of trainings and of the model-zoo DAG: the only place the library touches
MLflow, so everything else runs without a tracking store."""
from detectron_lib.tracking.runs import (
    command_run,
    end_run_after,
    init_experiment,
    interrupt_on_sigterm,
    make_tracker,
    record_logger,
    stage_run,
    start_parent_run,
    track_pretraining,
    track_training,
    tracked_run,
)
from detectron_lib.tracking.tracker import (
    DEFAULT_TRACKING_URI,
    Tracker,
    is_tracking_server,
    metric_key,
    tracking_uri,
)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "Tracker",
    "command_run",
    "end_run_after",
    "init_experiment",
    "interrupt_on_sigterm",
    "is_tracking_server",
    "make_tracker",
    "metric_key",
    "record_logger",
    "stage_run",
    "start_parent_run",
    "track_pretraining",
    "track_training",
    "tracked_run",
    "tracking_uri",
]
