"""utils.progress: the ETA arithmetic on a controlled clock and the line format."""
import re

import pytest

from detectron_lib.utils import progress as progress_module
from detectron_lib.utils.progress import Progress, format_duration


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = _Clock()
    monkeypatch.setattr(progress_module.time, "perf_counter", fake)
    return fake


def test_eta_is_the_median_step_time_times_the_steps_left(clock):
    progress = Progress(total=100, start=10, window=3)
    for seconds in (30.0, 2.0):   # a slow first step (model warm-up)
        clock.now += seconds
        progress.step()
        assert progress.eta_seconds() != progress.eta_seconds()   # NaN: fewer than 3 timed
    clock.now += 2.0
    progress.step()
    assert progress.done == 13 and progress.eta_seconds() == pytest.approx(2.0 * 87)
    clock.now += 3.0
    progress.step()
    assert progress.done == 14
    assert progress.eta_seconds() == pytest.approx(2.0 * 86)   # median of the last 3
    clock.now += 8.0
    progress.step(count=4)   # a batch of 4 images: 2 s each
    assert progress.done == 18 and progress.eta_seconds() == pytest.approx(2.0 * 82)


def test_line_format(clock):
    progress = Progress(total=1000, start=197)
    for _ in range(3):
        clock.now += 0.75
        progress.step()
    line = progress.line("iter", total_loss=0.84, loss_cls=0.2, lr=0.02, time=0.41, flag="on")
    assert line.startswith("eta: 0:10:00  iter: 200/1000  total_loss: 0.8400  loss_cls: 0.2000  "
                           "lr: 0.02000  time: 0.4100  flag: on  max_mem: ")
    assert re.fullmatch(r".*  max_mem: \d+\.\dG", line)


def test_format_duration():
    assert format_duration(0) == "0:00:00"
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(90061) == "1 day, 1:01:01"
    assert format_duration(float("nan")) == "?"
