"""Scratch folders a SIGKILLed trial or driver left in the temporary directory are removed by the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from alorectl import scratch


@pytest.fixture()
def tmp_root(tmp_path, monkeypatch):
    """The system temporary directory, for this test only (others' scratch folders are not touched)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _killed_process_folder(kind: str) -> Path:
    """The scratch folder of a process that made it and was SIGKILLed inside its ``with`` block."""
    code = ("import sys, tempfile, time; tempfile.tempdir = sys.argv[1]; from alorectl import scratch\n"
            f"with scratch.folder({kind!r}) as d:\n    print(d, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, tempfile.gettempdir()], stdout=subprocess.PIPE, text=True)
    left = Path(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    return left


def test_a_killed_process_scratch_folder_is_removed_by_the_next_of_its_kind(tmp_root):
    left = _killed_process_folder("trial")
    (left / "ckpt").mkdir()
    (left / "ckpt" / "weights.bin").write_bytes(b"x" * 1024)
    assert left.is_dir()  # the kill skipped the cleanup
    other_kind = _killed_process_folder("sim")

    with scratch.folder("trial") as mine:
        assert not left.exists()
        assert Path(mine).is_dir() and Path(mine).parent == tmp_root
        assert other_kind.is_dir()  # another kind of work is removed by its own kind
    assert not Path(mine).exists()


def test_live_processes_other_hosts_links_and_foreign_names_are_left_alone(tmp_root):
    live = scratch.make("search")  # this process: alive
    parent = tmp_root / f"alore-search-{os.getppid()}@{scratch._host()}-abc"  # another live process
    other_host = tmp_root / "alore-search-999999999@another_host-abc"  # a /tmp shared with another container
    not_ours = tmp_root / "alore-search-notes"
    for d in (parent, other_host, not_ours):
        d.mkdir()
    target = tmp_root / "keep"
    target.mkdir()
    (target / "file").write_text("kept")
    link = tmp_root / f"alore-search-999999999@{scratch._host()}-lnk"
    link.symlink_to(target, target_is_directory=True)
    dead = tmp_root / f"alore-search-999999999@{scratch._host()}-dead"
    dead.mkdir()

    removed = scratch.remove_orphans("search")

    assert removed == [dead]
    for kept in (live, parent, other_host, not_ours, link, target / "file"):
        assert kept.exists()
