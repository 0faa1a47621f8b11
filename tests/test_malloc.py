"""glibc malloc settings of the training and inference entry points (detectron_lib.utils.malloc)."""
import subprocess
import sys
import textwrap

import pytest

from detectron_lib import cli
from detectron_lib.utils import malloc
from detectron_lib.zoo import steps

pytestmark = pytest.mark.skipif(malloc._glibc() is None, reason="needs glibc")

# Runs in a fresh interpreter (malloc settings are process-wide): allocates and frees a 16 MiB
# block and prints whether it was mmap'ed and whether freeing it shrank the heap.
PROBE = textwrap.dedent("""
    import ctypes, sys
    from detectron_lib.utils.malloc import keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    before = libc.mallinfo2()
    block = libc.malloc(16 * 2**20)
    during = libc.mallinfo2()
    libc.free(block)
    after = libc.mallinfo2()
    print(during.hblkhd > before.hblkhd, after.arena < during.arena)
""")


def _probe(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"})
    mmapped, trimmed = out.stdout.split()
    return mmapped == "True", trimmed == "True"


def test_large_blocks_come_from_the_heap_and_stay_there():
    assert _probe("default") == (True, False)      # glibc's default: a fresh mmap per block
    assert _probe("keep") == (False, False)        # heap block, and the heap is not trimmed


@pytest.mark.parametrize("environ, chosen", [
    ({}, False),
    ({"PATH": "/bin", "MALLOC_ARENA_MAX": "2"}, False),   # not a threshold setting
    ({"MALLOC_TRIM_THRESHOLD_": "1"}, True),
    ({"MALLOC_MMAP_THRESHOLD_": "131072"}, True),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, True),
])
def test_users_malloc_settings_are_respected(environ, chosen):
    assert malloc.user_set_malloc_options(environ) is chosen


def test_entry_point_applies_the_settings(monkeypatch, tmp_path):
    """The one entry point, for a command and for a model-zoo DAG step."""
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("settings"))
    monkeypatch.setattr(steps, "evaluate", lambda *a, **k: calls.append("evaluate"))
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("{}\n")
    manifest = tmp_path / "zoo.yaml"
    manifest.write_text("name: z\ntable: Z.md\nbaselines: {b: {config: c.yaml, section: rpn}}\n")
    assert cli.main(["config", "--cfg", str(cfg)]) == 0
    assert cli.main(["zoo", "evaluate", "b", "--manifest", str(manifest)]) == 0
    assert calls == ["settings", "settings", "evaluate"]
