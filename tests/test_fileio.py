"""Contracts of xlt_runner.fileio: atomic files and directories, file locks."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xlt_runner import fileio
from xlt_runner.fileio import (Lock, atomic_path, file_lock, lock_held, publish_dir, publish_leftovers,
                               write_json_atomic, write_text_atomic)


def _child(code: str) -> subprocess.Popen:
    """A Python process running ``code`` (stdout piped, stdin kept open until killed)."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------------------ atomic files
def test_a_write_replaces_the_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "sub" / "data.npz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".npz" and tmp.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert _listing(target.parent) == ["data.npz"]


def test_until_the_block_ends_readers_see_the_old_file_whole(tmp_path):
    target = tmp_path / "record.json"
    write_text_atomic(target, "old\n")
    with atomic_path(target) as tmp:
        with open(tmp, "w") as handle:
            handle.write("half of the ")
            handle.flush()
            assert target.read_text() == "old\n"
            handle.write("new content\n")
        assert target.read_text() == "old\n"
    assert target.read_text() == "half of the new content\n"


def test_an_exception_in_the_block_keeps_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "record.json"
    write_json_atomic(target, {"status": "complete"})
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("{\"status\": ")
            raise RuntimeError("disk full (simulated)")
    assert json.loads(target.read_text()) == {"status": "complete"}
    assert _listing(tmp_path) == ["record.json"]


def test_a_killed_writer_leaves_the_old_file_whole(tmp_path):
    target = tmp_path / "resume.ckpt"
    target.write_bytes(b"old checkpoint")
    child = _child(f"""
        import os, signal
        from xlt_runner.fileio import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            tmp.write_bytes(b"half a new chec")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert child.wait(timeout=60) == -signal.SIGKILL
    assert target.read_bytes() == b"old checkpoint"


def test_the_file_and_then_the_rename_are_made_durable(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = fileio._fsync, os.replace
    monkeypatch.setattr(fileio, "_fsync", lambda path: (events.append(("fsync", Path(path))), real_fsync(path)))
    monkeypatch.setattr(fileio.os, "replace", lambda a, b: (events.append(("replace", Path(b))), real_replace(a, b)))
    target = tmp_path / "record.json"
    with atomic_path(target) as tmp:
        tmp.write_text("{}")
    assert events == [("fsync", tmp), ("replace", target), ("fsync", tmp_path)]


def test_text_and_json_writers(tmp_path):
    write_text_atomic(tmp_path / "a.csv", "x\r\ny\n")
    assert (tmp_path / "a.csv").read_bytes() == b"x\r\ny\n"  # newlines as given
    write_json_atomic(tmp_path / "b.json", {"path": tmp_path, "name": "Zürich"})
    assert json.loads((tmp_path / "b.json").read_text(encoding="utf-8")) == {"path": str(tmp_path), "name": "Zürich"}


# ------------------------------------------------------------------------- atomic directories
def test_a_published_directory_appears_complete_with_shareable_modes(tmp_path):
    target = tmp_path / "models" / "m"
    previous = os.umask(0o002)
    try:
        with publish_dir(target) as work:
            assert not target.exists()  # nothing published while it is being built
            (work / "sub").mkdir(mode=0o700)
            (work / "sub" / "weights.bin").write_bytes(b"w")
            (work / "sub" / "weights.bin").chmod(0o600)  # as safetensors writes it
    finally:
        os.umask(previous)
    assert (target / "sub" / "weights.bin").read_bytes() == b"w"
    assert [stat.S_IMODE(p.stat().st_mode) for p in (target, target / "sub", target / "sub" / "weights.bin")] \
        == [0o775, 0o775, 0o664]
    assert _listing(target.parent) == ["m"]


def test_a_failed_build_publishes_nothing_and_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="interrupted"):
        with publish_dir(tmp_path / "data") as work:
            (work / "part.tsv").write_text("half")
            raise RuntimeError("interrupted")
    assert _listing(tmp_path) == []


def test_of_two_racing_builders_the_first_to_finish_wins_and_the_other_discards_its_copy(tmp_path):
    target = tmp_path / "data"
    with publish_dir(target) as slow:
        (slow / "who").write_text("slow")
        with publish_dir(target) as fast:
            (fast / "who").write_text("fast")
        assert (target / "who").read_text() == "fast"
    assert (target / "who").read_text() == "fast"
    assert _listing(tmp_path) == ["data"]


def test_replace_swaps_in_the_new_directory_and_drops_the_old(tmp_path):
    target = tmp_path / "m"
    with publish_dir(target) as work:
        (work / "v").write_text("1")
    with publish_dir(target, replace=True) as work:
        (work / "v").write_text("2")
        assert (target / "v").read_text() == "1"  # the old one serves until the new one is complete
    assert (target / "v").read_text() == "2"
    assert _listing(tmp_path) == ["m"]


def test_a_killed_builder_leaves_only_a_listed_leftover(tmp_path):
    target = tmp_path / "data"
    child = _child(f"""
        import os, signal
        from xlt_runner.fileio import publish_dir
        with publish_dir({str(target)!r}) as work:
            (work / "part.tsv").write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert child.wait(timeout=60) == -signal.SIGKILL
    assert not target.exists()
    leftovers = publish_leftovers(target)
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".data.tmp-")
    assert publish_leftovers(tmp_path / "other") == []


# ------------------------------------------------------------------------------------ locks
def test_a_lock_excludes_a_second_holder_in_this_process(tmp_path):
    first, second = Lock(tmp_path / "run" / ".lock"), Lock(tmp_path / "run" / ".lock")
    assert first.try_acquire()
    assert not second.try_acquire()
    with pytest.raises(TimeoutError):
        second.acquire(timeout=0.05)
    first.release()
    assert second.try_acquire()
    second.release()
    assert (tmp_path / "run" / ".lock").exists()  # the lock file stays


def test_a_lock_excludes_another_process_and_dies_with_its_holder(tmp_path):
    path = tmp_path / ".lock"
    holder = _child(f"""
        import sys
        from xlt_runner.fileio import Lock
        lock = Lock({str(path)!r})
        print(lock.try_acquire(), flush=True)
        sys.stdin.read()
    """)
    try:
        assert holder.stdout.readline().strip() == "True"
        assert lock_held(path) is True
        assert not Lock(path).try_acquire()
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert lock_held(path) is False  # the kernel released it: no stale lock
    assert Lock(path).try_acquire()


def test_file_lock_says_when_it_waits_and_gives_up_after_the_timeout(tmp_path):
    path, waits = tmp_path / ".lock", []
    with file_lock(path, on_wait=lambda: waits.append(1)):
        assert lock_held(path) is True and waits == []
        with pytest.raises(TimeoutError):
            with file_lock(path, timeout=0.05, on_wait=lambda: waits.append(2)):
                pass
    assert waits == [2]
    assert lock_held(path) is False


def test_probing_a_missing_lock_tells_nothing_and_creates_nothing(tmp_path):
    assert lock_held(tmp_path / ".lock") is None
    assert _listing(tmp_path) == []
