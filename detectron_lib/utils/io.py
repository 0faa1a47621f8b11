"""File writing that never leaves a half-written output behind."""
import contextlib
import json
import logging
import os
import re
import secrets
from pathlib import Path

logger = logging.getLogger(__name__)

_TMP_HEX_BYTES = 6
# The temporary names _new_file_beside gives: ".<target name>.<12 hex digits>.tmp"
_ORPHAN_TMP = re.compile(rf"\..+\.[0-9a-f]{{{2 * _TMP_HEX_BYTES}}}\.tmp", re.DOTALL)


def _new_file_beside(path):
    """Create an empty, uniquely named temporary file beside ``path``; returns (fd, its path).

    It gets the permissions a plain open() would give (0o666 less the umask), so results
    stay readable by the teammates and services that a shared results directory serves;
    tempfile.mkstemp would make every output private (0o600).
    """
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(_TMP_HEX_BYTES)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_write(path, mode="w", **open_kwargs):
    """Open a temporary file beside ``path``; rename it onto ``path`` only if the block succeeds.

    An interrupted job therefore never leaves a file that Snakemake (or a resume) would take
    as finished.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_file_beside(path)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path, obj, **dump_kwargs):
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, **dump_kwargs)


def remove_orphan_temporaries(directory):
    """Delete the temporaries that atomic_write calls killed mid-write left in ``directory``
    (regular files named ``.<name>.<12 hex digits>.tmp``; nothing else, no subdirectories);
    returns the removed paths. Call it only where no other process is writing into
    ``directory`` at the same time: an atomic write in progress would lose its file."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    with os.scandir(directory) as entries:
        orphans = [Path(e.path) for e in entries
                   if _ORPHAN_TMP.fullmatch(e.name) and e.is_file(follow_symlinks=False)]
    for path in orphans:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s) an interrupted write left in %s: %s",
                    len(removed), directory, ", ".join(sorted(p.name for p in removed)))
    return removed
