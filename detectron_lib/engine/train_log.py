"""Reading ``train_log.jsonl``, the training log (one JSON object per logged iteration).

The trainer appends to it line by line, so a run killed mid-write can leave a torn *last*
line: that line is dropped with a warning (the iteration it logged is redone on resume). An
unparsable line anywhere else means the file was damaged otherwise, and is an error naming
the file and line.
"""
import json
import logging
from pathlib import Path

from detectron_lib.errors import DetectronError

logger = logging.getLogger(__name__)

TRAIN_LOG = "train_log.jsonl"   # its name in a training's OUTPUT_DIR


class TrainLogError(DetectronError):
    """A training log is damaged other than by a torn last line."""


def _parse_record(line):
    record = json.loads(line)
    if not isinstance(record, dict) or not isinstance(record.get("iter"), int):
        raise ValueError("not a JSON object with an integer 'iter'")
    return record


def read_train_log_lines(path):
    """The records of the training log at ``path`` in file order, [] if it does not exist.

    A torn last line (a run killed mid-write) is dropped with a warning; any other line that
    is not a JSON object with an integer "iter" raises TrainLogError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    # errors="replace": a line torn inside a multi-byte character is just unparsable
    lines = [(number, line) for number, line in
             enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1)
             if line.strip()]
    records = []
    for index, (number, line) in enumerate(lines):
        try:
            records.append(_parse_record(line))
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            if index == len(lines) - 1:
                logger.warning("%s: dropping its unparsable last line %d (a run killed while "
                               "writing it): %.80r", path, number, line)
                break
            raise TrainLogError(
                f"{path}, line {number}: not a training-log record ({err}); the file is damaged "
                "beyond a torn last line. Delete that line, or the file (only the loss history "
                "is lost), and rerun") from None
    return records


def read_train_log(path):
    """Records of the training log at ``path``, one per logged iteration in iteration order;
    an iteration logged twice (a resumed run's redone iterations) keeps its latest record."""
    by_iter = {record["iter"]: record for record in read_train_log_lines(path)}
    return [by_iter[i] for i in sorted(by_iter)]
