"""Daemons that the cluster tests (test_slurm, test_tracking_server) start on this machine:
munge, SLURM's controller and node daemon, PostgreSQL, an MLflow server.

Each runs in the foreground as a child of the test, in a session of its own, with its output
in a log file; `Daemons` stops them in reverse order (SIGTERM, then SIGKILL of that session)
whatever the test did. Programs that are not installed skip the test, saying how `make test`
installs them; in CI (CI=true), where .ci/run installs them, they fail it instead.
"""
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

INSTALL_SCRIPT = "tests/install_services.sh"


def unavailable(what, reasons):
    """Skip the test (in CI, CI=true: fail it) because service ``what`` cannot run here, for
    ``reasons`` (a list of phrases)."""
    message = (f"{what}: {', '.join(reasons)}; `make test` installs Debian's packages when "
               f"run as root ({INSTALL_SCRIPT})")
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_programs(what, programs, as_root=False, path=None):
    """Skip (in CI: fail) the test unless every one of ``programs`` is on ``path`` (default:
    PATH) and, with ``as_root``, the test runs as root; the message names what is missing."""
    reasons = [f"{name} not found" for name in programs
               if shutil.which(name, path=path) is None]
    if as_root and os.geteuid() != 0:
        reasons.append("not running as root")
    if reasons:
        unavailable(what, reasons)


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout_s, what, interval_s=0.2):
    """Call ``condition()`` until it returns a true value, which is returned; after
    ``timeout_s`` seconds raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        time.sleep(interval_s)


class Daemons:
    """Foreground daemons, started in order and stopped in reverse.

    log_dir: where each daemon's stdout and stderr go (``<name>.out``).
    grace_s: how long a daemon has to exit after SIGTERM before its session gets SIGKILL.
    """

    def __init__(self, log_dir, grace_s=15.0):
        self.log_dir = Path(log_dir)
        self.grace_s = grace_s
        self._running = {}     # name -> (Popen, log file, stop signal), in start order

    def start(self, name, argv, stop_signal=signal.SIGTERM, **popen_kwargs):
        """Start ``argv`` as daemon ``name`` (a new session; output to its log); returns the
        Popen. ``stop_signal`` is what stop() sends first (PostgreSQL: SIGINT, its fast
        shutdown). Extra keyword arguments go to Popen (env, cwd, user, ...)."""
        if name in self._running:
            raise ValueError(f"daemon {name} is already started")
        log = open(self.log_dir / f"{name}.out", "ab")
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       **popen_kwargs)
        except BaseException:
            log.close()
            raise
        self._running[name] = (process, log, stop_signal)
        return process

    def alive(self, name):
        return name in self._running and self._running[name][0].poll() is None

    def log_tail(self, name, chars=3000):
        path = self.log_dir / f"{name}.out"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def require_alive(self, *names):
        """Raise RuntimeError with the daemon's exit code and log tail if one has exited."""
        for name in names:
            if not self.alive(name):
                code = self._running[name][0].returncode if name in self._running else None
                raise RuntimeError(f"daemon {name} is not running (exit code {code}); its "
                                   f"output:\n{self.log_tail(name)}")

    def stop(self, name):
        """Its stop signal to daemon ``name``, SIGKILL to its session after grace_s;
        idempotent."""
        if name not in self._running:
            return
        process, log, stop_signal = self._running.pop(name)
        try:
            if process.poll() is None:
                process.send_signal(stop_signal)
                try:
                    process.wait(self.grace_s)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(self.grace_s)
        except ProcessLookupError:
            pass
        finally:
            log.close()

    def stop_all(self):
        """Stop every daemon, the last started first."""
        for name in reversed(list(self._running)):
            self.stop(name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_all()
        return False
