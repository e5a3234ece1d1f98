"""Atomic writes and file locks: the one implementation for records, checkpoints and caches.

**Files.** :func:`atomic_path` (and :func:`write_text_atomic`, :func:`write_json_atomic` on
top of it) writes a temporary file in the target's directory, fsyncs it, renames it over the
target with ``os.replace`` and fsyncs the directory. A reader sees the old file or the new
one, never part of one; an exception in the block (or a crash) leaves the old file. Files get
the permissions the umask allows, like ``open()``.

**Directories.** :func:`publish_dir` builds a directory (a converted model, a generated data
set) in a temporary sibling and renames it into place when complete, so the target is absent,
old or complete. Of two concurrent builders the first rename wins; the other discards its copy.

**Locks.** :class:`Lock` and :func:`file_lock`: an exclusive ``flock`` on a lock file (via
``filelock``) that excludes every other holder, in this process or another. The kernel
releases it when the holder dies, so a killed process leaves no stale lock; the lock file
stays in place. :func:`lock_held` probes a lock without taking it. On a cluster file system
this needs ``flock`` support (NFSv4, Lustre mounted with ``flock``, GPFS, BeeGFS).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for the caller to write; on a clean exit, fsync
    it, ``os.replace`` it onto ``path`` and fsync the directory; on an exception, delete it and
    leave ``path`` as it was.

    The temporary file exists (empty) when yielded, named ``.<name>.<random>.tmp<suffix>``
    (same suffix, for writers that infer the format from it, e.g. ``np.savez``). It is created
    like ``open()`` creates files (mode ``0o666`` minus the umask, applied by the kernel: no
    process-wide umask change, so it is thread-safe); writers that truncate or recreate it keep
    that. Creates ``path``'s parent directories. A killed process may leave the temporary
    file behind, never a partial ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)  # the rename itself survives a node failure
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (see :func:`write_text_atomic`).

    Values JSON cannot represent (paths, numpy scalars, ...) are written as their ``str``.
    """
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


@contextmanager
def publish_dir(target: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield a new empty directory ``.<name>.tmp-<random>`` next to ``target`` for the caller to
    fill; on a clean exit, fsync its tree, give it the permissions the umask allows (directories
    ``0o777``, files ``0o666``, minus the umask) and rename it to ``target``.

    If ``target`` exists by then: with ``replace``, it is renamed aside to ``.<name>.stale-<random>``
    and deleted after the new one is in place (hold a lock around builders that replace);
    without, the existing one is kept (a concurrent builder finished first) and this copy is
    discarded. On an exception the temporary directory is deleted. A killed builder leaves it
    behind: see :func:`publish_leftovers`. Creates ``target``'s parent directories.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_sibling_dir(target, "tmp")
    try:
        yield tmp
        _settle_tree(tmp)
        stale = None
        if replace and target.exists():
            stale = target.with_name(f".{target.name}.stale-{secrets.token_hex(4)}")
            os.rename(target, stale)
        try:
            os.rename(tmp, target)
        except OSError:
            if replace or not target.is_dir():
                raise
        else:
            _fsync(target.parent)
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a successful rename


def publish_leftovers(target: str | os.PathLike) -> list[Path]:
    """Temporary and stale directories that killed :func:`publish_dir` builders of ``target``
    left; only safe to delete while holding the lock that every builder of ``target`` holds."""
    target = Path(target)
    return sorted([*target.parent.glob(f".{target.name}.tmp-*"), *target.parent.glob(f".{target.name}.stale-*")])


def _new_sibling_dir(target: Path, kind: str) -> Path:
    """Create ``.<name>.<kind>-<random>`` beside ``target`` with mode ``0o777`` minus the umask
    (applied by the kernel, unlike ``mkdtemp``'s owner-only ``0o700``)."""
    while True:
        path = target.with_name(f".{target.name}.{kind}-{secrets.token_hex(4)}")
        try:
            path.mkdir(0o777)
            return path
        except FileExistsError:
            continue


def _settle_tree(root: Path) -> None:
    """Fsync every file and directory under ``root`` and give them ``root``'s mode
    (files without execute bits): writers such as ``mkdtemp`` or safetensors create them owner-only."""
    dir_mode = root.stat().st_mode & 0o777
    for directory, subdirs, files in os.walk(root):
        for name in files:
            path = Path(directory, name)
            if not path.is_symlink():
                path.chmod(dir_mode & 0o666)
                _fsync(path)
        for name in subdirs:
            if not Path(directory, name).is_symlink():
                Path(directory, name).chmod(dir_mode)
        _fsync(Path(directory))


class Lock:
    """Exclusive lock on the file ``path``, excluding every other holder (another instance in
    this process, or another process). The file and its parent directories are created on the
    first acquire and stay after release. Keep the instance while holding the lock: a
    garbage-collected instance releases it."""

    def __init__(self, path: str | os.PathLike) -> None:
        from filelock import FileLock  # imported on use: ~50 ms that readers of records need not pay

        self.path = Path(path)
        self._lock = FileLock(str(self.path))

    def try_acquire(self) -> bool:
        """Take the lock if it is free, without waiting; False when another holder has it."""
        try:
            self.acquire(timeout=0)
        except TimeoutError:
            return False
        return True

    def acquire(self, timeout: float | None = None) -> None:
        """Take the lock, waiting at most ``timeout`` seconds (None: as long as it takes);
        raises TimeoutError when it stays held by another holder, RuntimeError instead of
        waiting forever for a holder in this same thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock.acquire(timeout=-1 if timeout is None else timeout)  # filelock.Timeout is a TimeoutError

    def release(self) -> None:
        """Let go of the lock if this instance holds it."""
        if self._lock.is_locked:
            self._lock.release()


@contextmanager
def file_lock(path: str | os.PathLike, timeout: float | None = None,
              on_wait: Callable[[], None] | None = None) -> Iterator[Lock]:
    """Hold :class:`Lock` ``path`` for the block, waiting at most ``timeout`` seconds for it
    (None: as long as it takes; TimeoutError after that). ``on_wait`` is called once, before
    waiting, when another holder has the lock (e.g. to say so)."""
    lock = Lock(path)
    if not lock.try_acquire():
        if on_wait is not None:
            on_wait()
        lock.acquire(timeout)
    try:
        yield lock
    finally:
        lock.release()


def lock_held(path: str | os.PathLike) -> bool | None:
    """Whether some holder has :class:`Lock` ``path`` now, without taking it for longer than the
    probe and without creating the file; None when that cannot be told (no such file, no
    permission to open it, no ``flock`` on this system or file system)."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return None
    for flags in (os.O_RDWR, os.O_RDONLY):  # NFS emulates flock with POSIX locks, which need write access
        try:
            fd = os.open(path, flags)
            break
        except PermissionError:
            continue
        except OSError:
            return None
    else:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # also releases the lock if we took it
    return False


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
