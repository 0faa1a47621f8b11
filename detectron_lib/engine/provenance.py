"""Which config an output directory's training results belong to.

``train`` claims OUTPUT_DIR before it resumes or writes anything: the directory's
``provenance.json`` records the training config (its keys and their SHA-256), and a run whose
training config differs from the recorded one never resumes or returns the results there. It
stops with a ConfigError listing the keys that differ, unless asked to overwrite (``detectron
train --overwrite``; the workflow always overwrites, since Snakemake reruns a job exactly when
its config changed), in which case the earlier run's results are removed first.

Keys that cannot change the trained weights are left out of the comparison, so editing them
keeps a finished run finished: everything under TEST (used by ``detectron test`` only) and
PRETRAIN (used by ``detectron pretrain`` only), where files go or come from (OUTPUT_DIR,
ROOT_DIR, DOWNLOAD_CACHE), how often snapshots are taken and whether a run resumes
(TRAIN.SNAPSHOT_ITERS, TRAIN.AUTO_RESUME: resuming is bit-identical), the data loader's worker
count (the data order is a function of the seed and iteration alone), DEDUP_BOXES (read at
test time only), and the keys nothing reads (config.compat.INERT_KEYS).

A directory written before provenance was recorded is judged by its ``config.yaml``.
"""
import hashlib
import json
import logging
from pathlib import Path

from detectron_lib.config import load_config
from detectron_lib.config.compat import INERT_KEYS
from detectron_lib.engine.checkpoint import FINAL_NAME
from detectron_lib.errors import ConfigError
from detectron_lib.utils.download import cached_path, file_sha256
from detectron_lib.utils.io import write_json_atomic

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "provenance.json"
SAVED_CONFIG = "config.yaml"
# Results of a training run (and of evaluating its weights) in OUTPUT_DIR
RESULT_PATTERNS = ("model_iter*.pth", FINAL_NAME, "train_log.jsonl", "metrics*.json",
                   "*_results.json")
# Key prefixes that cannot change the trained weights (see the module docstring)
NOT_TRAINING_KEYS = (
    "TEST.", "PRETRAIN.", "OUTPUT_DIR", "ROOT_DIR", "DOWNLOAD_CACHE", "TRAIN.SNAPSHOT_ITERS",
    "TRAIN.AUTO_RESUME", "DATA_LOADER.", "DEDUP_BOXES",
)
# The pseudo-key under which the initial weights' content is recorded
WEIGHTS_DIGEST_KEY = "TRAIN.WEIGHTS (sha256 of the file)"
# Differing keys a message lists before "... and N more"
_LISTED = 10


def training_config(cfg):
    """{flat key: JSON value} of the keys that determine the trained weights, plus the SHA-256
    of the TRAIN.WEIGHTS file (a URL is downloaded into DOWNLOAD_CACHE first): a file replaced
    under the same name is another initialization."""
    flat = {key: value for key, value in cfg.to_flat_dict().items()
            if not key.startswith(NOT_TRAINING_KEYS) and key not in INERT_KEYS}
    if cfg.TRAIN.WEIGHTS:
        weights = cached_path(cfg.TRAIN.WEIGHTS, cfg.DOWNLOAD_CACHE)
        flat[WEIGHTS_DIGEST_KEY] = file_sha256(weights) if weights.is_file() else None
    return json.loads(json.dumps(flat, sort_keys=True))


def config_digest(training_keys):
    return hashlib.sha256(json.dumps(training_keys, sort_keys=True).encode()).hexdigest()


def claim_output_dir(cfg, output_dir, overwrite=False):
    """Make ``output_dir`` hold the results of ``cfg`` and nothing else.

    Results of the same training config are kept (to resume or return). Results of another
    config, or of an unknown one, raise a ConfigError saying what differs, or with
    ``overwrite`` are removed. Then provenance.json records ``cfg``. Call on rank 0 only.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"OUTPUT_DIR '{output_dir}' is a file, not a directory; set OUTPUT_DIR "
                          "to a directory for the run's results")
    current = training_config(cfg)
    results = existing_results(output_dir)
    if results:
        recorded = recorded_training_config(output_dir)
        compared = current
        if recorded is not None and WEIGHTS_DIGEST_KEY not in recorded:  # from a config.yaml
            compared = {k: v for k, v in current.items() if k != WEIGHTS_DIGEST_KEY}
        if recorded != compared:
            if not overwrite:
                raise ConfigError(_mismatch_message(output_dir, recorded, compared))
            for path in results:
                path.unlink(missing_ok=True)
            logger.warning("%s held the results of another training config: removed %d files "
                           "(--overwrite)", output_dir, len(results))
    try:
        write_json_atomic(output_dir / PROVENANCE_FILE,
                          {"config_sha256": config_digest(current), "config": current},
                          indent=1, sort_keys=True)
    except OSError as e:
        raise ConfigError(f"cannot write into OUTPUT_DIR '{output_dir}' ({e.strerror or e}); "
                          "set OUTPUT_DIR to a directory you can write to") from None


def existing_results(output_dir):
    """The files of an earlier run in ``output_dir`` (empty if it has none)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return sorted({path for pattern in RESULT_PATTERNS for path in output_dir.glob(pattern)
                   if path.is_file()})


def recorded_training_config(output_dir):
    """The training config recorded in ``output_dir`` (provenance.json, else config.yaml of a
    directory written before provenance was recorded), or None if neither can be read."""
    output_dir = Path(output_dir)
    try:
        record = json.loads((output_dir / PROVENANCE_FILE).read_text())
        if isinstance(record, dict) and isinstance(record.get("config"), dict):
            return record["config"]
    except (OSError, ValueError):
        pass
    try:
        return training_config(load_config(str(output_dir / SAVED_CONFIG), []))
    except Exception:  # missing, torn or from another version: unknown provenance
        return None


def _mismatch_message(output_dir, recorded, current):
    fix = (f"Train into a fresh OUTPUT_DIR, or rerun with --overwrite to delete the results in "
           f"{output_dir} and train from the start.")
    if recorded is None:
        return (f"{output_dir} holds training results, but no record of the config that "
                f"produced them ({PROVENANCE_FILE} or a readable {SAVED_CONFIG}), so they are "
                f"neither resumed nor returned. {fix}")
    keys = sorted(set(recorded) | set(current))
    differ = [key for key in keys if recorded.get(key, "<absent>") != current.get(key, "<absent>")]
    lines = [f"  {key}: {recorded.get(key, '<absent>')!r} there, {current.get(key, '<absent>')!r} "
             "now" for key in differ[:_LISTED]]
    if len(differ) > _LISTED:
        lines.append(f"  ... and {len(differ) - _LISTED} more")
    return (f"{output_dir} holds the results of another training config, which are neither "
            f"resumed nor returned; {len(differ)} key(s) differ:\n" + "\n".join(lines) +
            f"\n{fix}")
