"""Content-addressed cache of RAG stage results (retrieval, translation, judgement, rewrite).

**Keys.** :func:`content_key` hashes everything a result depends on (query or passage text,
model identity, prompt, decoding settings) into a sha256 hex string; the caller chooses the
parts. A value is a pure function of its key, so any two writers of a key wrote the same thing.

**Store.** :class:`RagCache` is one SQLite file (``method.cache.path``) that the jobs of a sweep
share: table ``entries(stage, key, value, created_at)`` with values stored as JSON text.

- *First writer wins*: :meth:`RagCache.put_many` inserts with ``INSERT OR IGNORE``; an entry
  is never overwritten, and a concurrent writer of the same key computed the same value.
- *No half-written entry*: each ``put_many`` is one SQLite transaction. A job killed at any
  point (SIGKILL, out-of-memory, node loss) leaves all of that batch or none of it; SQLite
  discards the uncommitted tail of the write-ahead log when the file is next opened.
- *Concurrent jobs wait, they do not fail*: writers take the write lock up front
  (``BEGIN IMMEDIATE``) and wait up to :data:`BUSY_TIMEOUT_S` for it; in WAL mode readers
  never wait for a writer and see the last committed state.
- Durability: ``synchronous=NORMAL`` in WAL mode. A killed process loses nothing it committed;
  a power loss may lose the last commits (they are recomputed), never corrupt the file.

**Where it is safe.** ``journal_mode="wal"`` (the default) needs every process that opens the
file to run on ONE host: the WAL index is shared memory (the ``-shm`` file, memory-mapped), and
SQLite does not support WAL over a network file system. Jobs on several nodes of a shared file
system must use ``journal_mode="delete"`` (a rollback journal guarded by POSIX ``fcntl`` locks;
readers then wait while a write commits). That requires a file system whose locks work across
nodes (NFSv4 with working locks, Lustre mounted with ``flock``, GPFS, BeeGFS); NFS without
locking (``nolock``, NFSv3 without lockd) is NOT safe in either mode and can corrupt the file.
The file records its mode at creation; a process asking for the other mode is refused, so a
sweep cannot mix them.

**Processes.** The connection is opened lazily, per process: after a fork (DataLoader workers)
the child opens its own connection and never touches the parent's. Pickling keeps the path and
mode and reopens in the unpickling process. ``RagCache(None)`` is an in-memory database private
to its process (nothing is shared or kept; it cannot be pickled). One object is used from one
thread. :attr:`RagCache.counters` counts this object's lookups and writes only: a worker
process's counts stay in that worker.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from xlt_runner.config import ConfigError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0  # how long a writer waits for another job's write lock before failing
JOURNAL_MODES = {"wal": "NORMAL", "delete": "FULL"}  # journal mode -> synchronous setting
_KEYS_PER_QUERY = 500  # below SQLite's limit on bound variables (999 before 3.32)


def content_key(*parts: Any) -> str:
    """sha256 hex digest of the canonical JSON of ``parts`` (sorted keys, UTF-8, no spaces).

    Stable across dict ordering and processes; any change in any part changes the key. Parts
    must be JSON-able (str, int, float, bool, None, lists and dicts of them); a tuple hashes
    like the list of its items. TypeError otherwise.
    """
    text = json.dumps(list(parts), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RagCache:
    """Stage results keyed by :func:`content_key`, in the SQLite file ``path`` (None: in memory).

    ``journal_mode`` is ``"wal"`` (all jobs on one host) or ``"delete"`` (jobs on several nodes
    of a shared file system with working locks); see the module docstring. The file and its
    parent directory are created on first use; a path that cannot be used, a file of another
    schema version or mode, or a file that is not a RAG cache raises :class:`ConfigError`
    naming ``method.cache.path``.
    """

    def __init__(self, path: str | os.PathLike | None, *, journal_mode: str = "wal") -> None:
        if journal_mode not in JOURNAL_MODES:
            raise ConfigError(f"method.cache.journal_mode={journal_mode!r}: expected one of "
                              f"{sorted(JOURNAL_MODES)}")
        self.path = None if path is None else Path(path)
        self.journal_mode = journal_mode
        self._conn: sqlite3.Connection | None = None
        self._conn_pid: int | None = None
        self._inherited: list[sqlite3.Connection] = []  # opened before a fork: never used or closed
        self._closed = False
        self._counters: dict[str, dict[str, int]] = {}

    def __repr__(self) -> str:
        return f"RagCache({str(self.path) if self.path else ':memory:'}, journal_mode={self.journal_mode!r})"

    # ------------------------------------------------------------------ connection
    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        if self._conn is not None and self._conn_pid == os.getpid():
            return self._conn
        if self._conn is not None:
            # Opened by the parent before a fork: SQLite forbids using it here, and closing it
            # could disturb the parent's locks, so it is kept, never used and never closed.
            self._inherited.append(self._conn)
        self._conn = self._open()
        self._conn_pid = os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        where = f"method.cache.path={self.path}"
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"{where}: cannot create the cache's directory {self.path.parent} "
                                  f"({e.strerror or e}); point method.cache.path at a writable "
                                  f"location") from e
        try:
            conn = sqlite3.connect(":memory:" if self.path is None else self.path,
                                   timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as e:
            raise ConfigError(f"{where}: cannot open the RAG cache ({e}); point method.cache.path "
                              f"at a writable file in a writable directory") from e
        try:
            stored_version, stored_mode = self._init_schema(conn)
            if stored_version != str(SCHEMA_VERSION):
                raise ConfigError(f"{where}: this RAG cache was written with schema version "
                                  f"{stored_version}; this xlt_runner reads version {SCHEMA_VERSION}. "
                                  f"Point method.cache.path at a new file, or delete this one "
                                  f"(its entries are recomputed)")
            if self.path is not None and stored_mode != self.journal_mode:
                raise ConfigError(f"{where}: this RAG cache was created with journal mode "
                                  f"{stored_mode!r} and is opened with {self.journal_mode!r}; all jobs "
                                  f"sharing the file must use method.cache.journal_mode={stored_mode}")
            if self.path is not None:
                mode = conn.execute(f"PRAGMA journal_mode={self.journal_mode}").fetchone()[0]
                if mode != self.journal_mode:
                    raise ConfigError(f"{where}: SQLite could not put the cache in journal mode "
                                      f"{self.journal_mode!r} (it reports {mode!r})")
            conn.execute(f"PRAGMA synchronous={JOURNAL_MODES[self.journal_mode]}")
        except sqlite3.DatabaseError as e:
            conn.close()
            raise ConfigError(f"{where}: cannot use the RAG cache ({e}); it must be a RAG cache (or "
                              f"absent) in a writable directory on a file system with working locks; "
                              f"otherwise point method.cache.path at a new file") from e
        except BaseException:
            conn.close()
            raise
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> tuple[str, str]:
        """Create the tables if absent (first opener wins) and return the file's (schema
        version, journal mode). Refuses a database that has tables but no ``meta``."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "meta" not in tables:
                raise ConfigError(f"method.cache.path={self.path}: this SQLite file is not a RAG cache "
                                  f"(it has tables {sorted(tables)} and no 'meta'); point "
                                  f"method.cache.path at a new file")
            conn.execute("CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("CREATE TABLE IF NOT EXISTS entries(stage TEXT, key TEXT, value TEXT NOT NULL, "
                         "created_at TEXT, PRIMARY KEY(stage, key)) WITHOUT ROWID")
            conn.executemany("INSERT OR IGNORE INTO meta(name, value) VALUES (?, ?)",
                             [("schema_version", str(SCHEMA_VERSION)), ("journal_mode", self.journal_mode)])
            meta = dict(conn.execute("SELECT name, value FROM meta"))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return meta["schema_version"], meta["journal_mode"]

    def close(self) -> None:
        """Close this process's connection; later calls raise ValueError."""
        if self._conn is not None and self._conn_pid == os.getpid():
            self._conn.close()
        self._conn = None
        self._closed = True

    def __enter__(self) -> RagCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        if self.path is None:
            raise TypeError("an in-memory RagCache (method.cache.path unset) cannot be pickled: "
                            "another process could not see its entries; set method.cache.path")
        return {"path": self.path, "journal_mode": self.journal_mode}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], journal_mode=state["journal_mode"])

    # ------------------------------------------------------------------ entries
    def _count(self, stage: str) -> dict[str, int]:
        return self._counters.setdefault(stage, {"cached": 0, "computed": 0})

    def get_many(self, stage: str, keys: Sequence[str]) -> dict[str, Any]:
        """The JSON-decoded values of those ``keys`` that ``stage`` holds (absent keys are left
        out). Each key found counts as ``cached`` for the stage."""
        conn = self._connection()
        unique = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        for start in range(0, len(unique), _KEYS_PER_QUERY):
            chunk = unique[start:start + _KEYS_PER_QUERY]
            rows = conn.execute(f"SELECT key, value FROM entries WHERE stage = ? AND key IN "
                                f"({','.join('?' * len(chunk))})", [stage, *chunk])
            found.update((key, json.loads(value)) for key, value in rows)
        self._count(stage)["cached"] += len(found)
        return found

    def put_many(self, stage: str, items: Mapping[str, Any]) -> None:
        """Store ``items`` (key -> JSON-serialisable value) in one transaction; a key already
        present keeps its value (first writer wins). Counts ``len(items)`` as ``computed``.
        TypeError, before anything is written, for a non-str key or a value JSON cannot encode."""
        created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        rows = []
        for key, value in items.items():
            if not isinstance(key, str):
                raise TypeError(f"RagCache keys are str (content_key(...)); got {type(key).__name__}")
            rows.append((stage, key, json.dumps(value, ensure_ascii=False), created_at))
        conn = self._connection()
        self._count(stage)
        if not rows:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR IGNORE INTO entries(stage, key, value, created_at) "
                             "VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._count(stage)["computed"] += len(rows)

    @property
    def counters(self) -> dict[str, dict[str, int]]:
        """``{stage: {"cached": n, "computed": m}}`` over this object's lifetime: entries found by
        :meth:`get_many` and entries written by :meth:`put_many`. A warm rerun shows computed 0."""
        return copy.deepcopy(self._counters)

    def stats(self) -> dict[str, int]:
        """Number of entries per stage in the store (all jobs' entries, not only this object's)."""
        rows = self._connection().execute("SELECT stage, COUNT(*) FROM entries GROUP BY stage ORDER BY stage")
        return dict(rows)
