"""atomic_write (detectron_lib.utils.io): outputs get the permissions of a plain open()."""
import os
import stat

import pytest

from detectron_lib.utils.io import atomic_write


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
