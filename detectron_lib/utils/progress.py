"""Progress lines of long loops (training, pretraining, inference): steps done of the total,
an ETA, the given values and peak memory, one line each, for consoles and job logs alike:

    eta: 0:12:31  iter: 200/1000  total_loss: 0.8400  loss_cls: 0.2100  lr: 0.02000  time: 0.4100  data_time: 0.0100  max_mem: 1.7G
"""
import datetime
import resource
import statistics
import time
from collections import deque


def peak_memory_gb(device_type):
    """Peak memory of this process in GB: allocated CUDA memory on GPU, peak RSS on CPU."""
    if device_type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9   # KB on Linux


def format_duration(seconds):
    """'H:MM:SS' of a number of seconds ('?' when not known yet)."""
    if seconds != seconds:  # NaN
        return "?"
    return str(datetime.timedelta(seconds=int(round(seconds))))


class Progress:
    """Where a loop over steps ``start``..``total`` - 1 stands and when it will end.

    ``step(count)`` marks ``count`` steps done (a batch of images); the ETA is the median wall
    time per step of the last ``window`` calls (data loading included) times the steps left,
    so that a slow first step or an occasional snapshot does not swing it. Until three calls
    are timed it is unknown ('?'): a first step alone, with its one-time warm-up, would
    mislead (measured: 'eta: 0:27:33' after the first step of a training that took 15 min).
    """

    def __init__(self, total, start=0, window=20, device_type="cpu"):
        self.total, self.done = int(total), int(start)
        self.device_type = device_type
        self._durations = deque(maxlen=window)
        self._last = time.perf_counter()

    def step(self, count=1):
        now = time.perf_counter()
        self._durations.append((now - self._last) / max(count, 1))
        self._last = now
        self.done += count

    def eta_seconds(self):
        if len(self._durations) < 3:
            return float("nan")
        return statistics.median(self._durations) * max(self.total - self.done, 0)

    def line(self, unit, **values):
        """'eta: ...  <unit>: done/total  key: value ...  max_mem: ...G'; floats get 4
        significant decimals (lr 5)."""
        fields = [f"eta: {format_duration(self.eta_seconds())}", f"{unit}: {self.done}/{self.total}"]
        fields += [f"{key}: {_format_value(key, value)}" for key, value in values.items()]
        fields.append(f"max_mem: {peak_memory_gb(self.device_type):.1f}G")
        return "  ".join(fields)


def _format_value(key, value):
    if isinstance(value, float):
        return f"{value:.5f}" if key == "lr" else f"{value:.4f}"
    return str(value)
