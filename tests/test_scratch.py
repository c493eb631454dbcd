"""Scratch folders a SIGKILLed trial or driver left in the temporary directory are removed by the next one."""

from __future__ import annotations

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


def _process_in_folder(kind: str) -> tuple[subprocess.Popen, Path]:
    """A process working in a scratch folder of ``kind`` (until it is killed) and the folder."""
    code = ("import sys, tempfile, time; tempfile.tempdir = sys.argv[1]; from alorectl import scratch\n"
            f"with scratch.folder({kind!r}) as d:\n    print(d, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, tempfile.gettempdir()], stdout=subprocess.PIPE, text=True)
    return proc, Path(proc.stdout.readline().strip())


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def test_a_killed_process_scratch_folder_is_removed_by_the_next_of_its_kind(tmp_root):
    proc, left = _process_in_folder("trial")
    _kill(proc)
    (left / "ckpt").mkdir()
    (left / "ckpt" / "weights.bin").write_bytes(b"x" * 1024)
    assert left.is_dir()  # the kill skipped the cleanup
    other, other_kind = _process_in_folder("sim")
    _kill(other)

    with scratch.folder("trial") as mine:
        assert not left.exists()
        assert Path(mine).is_dir() and Path(mine).parent.parent == tmp_root
        assert list(Path(mine).iterdir()) == []  # the lock is beside the work, not in it
        assert other_kind.is_dir()  # another kind of work is removed by its own kind
    assert not Path(mine).exists()
    made = scratch.make("sim")
    assert not other_kind.exists()
    scratch.remove(made)
    assert not made.parent.exists() and not scratch._HELD


def test_folders_in_use_links_and_foreign_folders_are_left_alone(tmp_root):
    mine = scratch.make("search")  # this process works in it
    proc, theirs = _process_in_folder("search")  # another live process works in it
    unlocked = tmp_root / "alore-search-nolock"  # not made by scratch (or made before it): no lock to read
    unlocked.mkdir()
    target = tmp_root / "keep"
    (target / scratch.WORK).mkdir(parents=True)
    (target / scratch.LOCK).write_text("")
    link = tmp_root / "alore-search-link"
    link.symlink_to(target, target_is_directory=True)
    try:
        assert scratch.remove_orphans("search") == []
        for kept in (mine, theirs, unlocked, link, target / scratch.LOCK):
            assert kept.exists()
    finally:
        _kill(proc)
        scratch.remove(mine)
    assert scratch.remove_orphans("search") == [theirs.parent]  # its maker has ended now


def test_an_odd_entry_never_fails_the_work_that_asked_for_a_folder(tmp_root):
    (tmp_root / "alore-trial-afile").write_text("not a folder")
    locked_away = tmp_root / "alore-trial-nolockread"
    locked_away.mkdir()
    (locked_away / scratch.LOCK).mkdir()  # a folder where the lock file should be
    with scratch.folder("trial") as mine:
        assert Path(mine).is_dir()
    assert (tmp_root / "alore-trial-afile").is_file() and locked_away.is_dir()
