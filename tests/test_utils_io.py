"""atomic_write (detectron_lib.utils.io): outputs get the permissions of a plain open(); the
temporaries of killed writes are cleaned up."""
import os
import re
import stat
from unittest import mock

import pytest

from detectron_lib.utils.io import atomic_write, remove_orphan_temporaries


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=["022", "077", "002"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_written_file_has_the_mode_of_a_plain_open(tmp_path, umask):
    reference = tmp_path / "plain.bin"
    with open(reference, "wb") as f:
        f.write(b"x")
    ours = tmp_path / "sub" / "weights.pkl"
    with atomic_write(ours, "wb") as f:
        f.write(b"weights")
    assert ours.read_bytes() == b"weights"
    assert _mode(ours) == _mode(reference) == 0o666 & ~umask
    assert sorted(p.name for p in ours.parent.iterdir()) == ["weights.pkl"]


def test_replacing_a_file_keeps_no_temp_file_and_failure_keeps_the_old_one(tmp_path):
    path = tmp_path / "table.md"
    with atomic_write(path) as f:
        f.write("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_orphan_temporaries_of_killed_writes_are_removed_and_nothing_else(tmp_path):
    with pytest.raises(KeyboardInterrupt):  # a kill mid-write: the temporary stays behind
        with mock.patch("os.unlink"), atomic_write(tmp_path / "model_iter3.pth", "wb") as f:
            f.write(b"half")
            raise KeyboardInterrupt
    (orphan,) = [p for p in tmp_path.iterdir()]
    assert re.fullmatch(r"\.model_iter3\.pth\.[0-9a-f]{12}\.tmp", orphan.name)
    kept = [".keep", ".model_iter3.pth.tmp", ".x.0123456789ab.tmp.bak", "a.0123456789ab.tmp",
            ".x.0123456789AB.tmp", ".x.0123456789a.tmp", "model_iter3.pth"]
    for name in kept:
        (tmp_path / name).write_text("keep")
    (tmp_path / ".dir.0123456789ab.tmp").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".y.0123456789ab.tmp").write_text("elsewhere")

    assert remove_orphan_temporaries(tmp_path) == [orphan]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + [".dir.0123456789ab.tmp", "sub"])
    assert (tmp_path / "sub" / ".y.0123456789ab.tmp").exists()
    assert remove_orphan_temporaries(tmp_path) == []
    assert remove_orphan_temporaries(tmp_path / "absent") == []
