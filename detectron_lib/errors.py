"""Errors a user can cause. The CLI prints their message alone, without a traceback."""


class DetectronError(Exception):
    """Base class of user-facing errors: the message names the file, key or value and the fix."""


class ConfigError(DetectronError, ValueError):
    """A config file, key or value is wrong."""


class DatasetError(DetectronError, ValueError):
    """A dataset file, image or annotation record is missing or malformed."""


class TrackingError(DetectronError, RuntimeError):
    """The MLflow tracking store or server kept failing; the job stops rather than record a
    run it could not track."""
