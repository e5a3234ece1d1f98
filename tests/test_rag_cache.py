"""RagCache: content keys, JSON round trip, counters, concurrent jobs, kill safety, refusals."""
from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xlt_runner.config import ConfigError
from xlt_runner.rag.cache import RagCache, content_key

REPO = Path(__file__).resolve().parent.parent


def run_python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ------------------------------------------------------------------ keys and values
def test_content_key_is_canonical_and_sensitive_to_every_part():
    parts = ("translate", {"model": "nllb", "max_new_tokens": 256, "beams": 1}, "안녕하세요", None, 0.5)
    key = content_key(*parts)
    assert len(key) == 64 and int(key, 16) >= 0
    reordered = {"beams": 1, "max_new_tokens": 256, "model": "nllb"}
    assert content_key("translate", reordered, "안녕하세요", None, 0.5) == key
    changed = [("judge", parts[1], *parts[2:]),
               (parts[0], {**parts[1], "beams": 2}, *parts[2:]),
               (*parts[:2], "안녕하세요.", *parts[3:]),
               (*parts[:3], "", 0.5),
               (*parts[:4], 0.25),
               parts[:4]]
    assert len({content_key(*p) for p in changed} | {key}) == len(changed) + 1
    assert content_key("ab", "c") != content_key("a", "bc")  # parts are not concatenated


def test_round_trip_json_values_and_unicode(tmp_path):
    values = {
        content_key("dict"): {"text": "번역된 문단", "scores": [4.5, 3.0, None], "ok": True},
        content_key("list"): [1, "二", 3.25, None, {"ä": "ö"}],
        content_key("str"): "Tämä on käännös 🙂 — «quoted» \"x\"\n\ttab",
        content_key("float"): 0.1 + 0.2,
        content_key("none"): None,
    }
    with RagCache(tmp_path / "sub" / "cache.sqlite") as cache:
        cache.put_many("translation", values)
        assert cache.get_many("translation", list(values)) == values
        assert cache.get_many("judgement", list(values)) == {}  # stages are separate namespaces
    with RagCache(tmp_path / "sub" / "cache.sqlite") as reopened:
        got = reopened.get_many("translation", [*values, content_key("absent")])
        assert got == values and type(got[content_key("float")]) is float
        assert reopened.stats() == {"translation": 5}


def test_first_writer_wins():
    with RagCache(None) as cache:
        cache.put_many("s", {"k": "first"})
        cache.put_many("s", {"k": "second", "k2": 2})
        assert cache.get_many("s", ["k", "k2"]) == {"k": "first", "k2": 2}


def test_unserialisable_value_writes_nothing(tmp_path):
    with RagCache(tmp_path / "c.sqlite") as cache:
        with pytest.raises(TypeError):
            cache.put_many("s", {"a": 1, "b": object()})
        with pytest.raises(TypeError, match="keys are str"):
            cache.put_many("s", {"a": 1, 2: 2})
        assert cache.stats() == {} and cache.counters == {}


def test_counters_count_cached_and_computed():
    with RagCache(None) as cache:
        keys = [content_key("p", i) for i in range(5)]
        assert cache.get_many("translation", keys) == {}
        cache.put_many("translation", {k: i for i, k in enumerate(keys[:3])})
        cache.get_many("translation", keys)
        cache.get_many("translation", keys[:1])
        cache.put_many("judgement", {keys[0]: {"semantic_equivalence": 4.0}})
        assert cache.counters == {"translation": {"cached": 4, "computed": 3},
                                  "judgement": {"cached": 0, "computed": 1}}
        cache.counters["translation"]["cached"] = 99  # a copy, not the live counts
        assert cache.counters["translation"]["cached"] == 4


def test_get_many_beyond_sqlite_variable_limit(tmp_path):
    keys = [f"k{i}" for i in range(1200)]
    with RagCache(tmp_path / "c.sqlite") as cache:
        # SQLite before 3.32 binds at most 999 variables per statement (builds differ: this one
        # may allow 250000), so the limit is set to that here.
        cache._connection().setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        cache.put_many("s", {k: i for i, k in enumerate(keys)})
        got = cache.get_many("s", keys)
    assert len(got) == 1200 and got["k1199"] == 1199


# ------------------------------------------------------------------ processes
def test_pickle_reopens_and_in_memory_refuses(tmp_path):
    cache = RagCache(tmp_path / "c.sqlite")
    cache.put_many("s", {"k": [1, 2]})
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.get_many("s", ["k"]) == {"k": [1, 2]} and clone.counters == {"s": {"cached": 1, "computed": 0}}
    with pytest.raises(TypeError, match="method.cache.path"):
        pickle.dumps(RagCache(None))


def _write_after_fork(cache: RagCache, parent_conn: sqlite3.Connection) -> None:
    assert cache._connection() is not parent_conn
    cache.put_many("s", {"child": os.getpid()})


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_forked_child_opens_its_own_connection(tmp_path):
    cache = RagCache(tmp_path / "c.sqlite")
    cache.put_many("s", {"parent": 1})
    child = multiprocessing.get_context("fork").Process(target=_write_after_fork,
                                                         args=(cache, cache._connection()))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert cache.get_many("s", ["parent", "child"]) == {"parent": 1, "child": child.pid}


CONCURRENT_WORKER = r"""
import random, sys, time
from pathlib import Path
from xlt_runner.rag.cache import RagCache, content_key
path, mode, gate, worker = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
def value(i):
    return {"i": i, "text": "번역 문단 " * 20 + str(i), "score": i / 7}
mine = list(range(worker * 40, worker * 40 + 80))  # overlaps the next worker's range by half
rng = random.Random(worker)
(gate.parent / f"ready{worker}").touch()
while not gate.exists():
    time.sleep(0.001)
cache = RagCache(path, journal_mode=mode)  # all four open (and create) the file at once
began = time.time()
for _ in range(20):
    rng.shuffle(mine)
    for start in range(0, len(mine), 10):
        probe = rng.sample(range(200), 20)
        got = cache.get_many("t", [content_key(i) for i in probe])
        assert all(got[content_key(i)] == value(i) for i in probe if content_key(i) in got)
        cache.put_many("t", {content_key(i): value(i) for i in mine[start:start + 10]})
print(cache.counters["t"]["computed"], began, time.time())
"""


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_concurrent_writers_share_one_file(tmp_path, journal_mode):
    path, gate = tmp_path / "shared" / "cache.sqlite", tmp_path / "go"
    workers = [run_python(CONCURRENT_WORKER, str(path), journal_mode, str(gate), str(w)) for w in range(4)]
    deadline = time.time() + 60
    while not all((tmp_path / f"ready{w}").exists() for w in range(4)) and time.time() < deadline:
        time.sleep(0.01)
    gate.touch()  # release the started interpreters together
    results = [w.communicate(timeout=120) for w in workers]
    spans = []
    for worker, (out, err) in zip(workers, results):
        assert worker.returncode == 0, err
        computed, began, ended = out.split()
        assert int(computed) == 20 * 80  # 160 transactions of 10 entries each
        spans.append((float(began), float(ended)))
    assert max(b for b, _ in spans) < min(e for _, e in spans)  # all four were writing at once
    expected = {content_key(i): {"i": i, "text": "번역 문단 " * 20 + str(i), "score": i / 7} for i in range(200)}
    with RagCache(path, journal_mode=journal_mode) as cache:
        assert cache.stats() == {"t": 200}
        assert cache.get_many("t", list(expected)) == expected


KILLED_WRITER = r"""
import json, os, signal, sys
from xlt_runner.rag.cache import RagCache
path, marker = sys.argv[1], sys.argv[2]
cache = RagCache(path)
cache.put_many("committed", {f"c{i}": {"i": i, "text": "ü" * 100} for i in range(100)})
conn = cache._connection()

def kill_once_the_write_reached_disk():
    # SQLite calls this every 1000 VM instructions while it executes the batch's INSERTs.
    # Uncommitted pages spill from the 2 MB page cache into the -wal file; at 2 MB of WAL
    # (below the 4 MB autocheckpoint) the batch is partly on disk and not committed.
    wal_bytes = os.path.getsize(path + "-wal")
    if wal_bytes > 2_000_000:
        with open(marker, "w") as f:
            json.dump({"in_transaction": conn.in_transaction, "wal_bytes": wal_bytes}, f)
        os.kill(os.getpid(), signal.SIGKILL)

conn.set_progress_handler(kill_once_the_write_reached_disk, 1000)
cache.put_many("batch", {f"b{i}": {"i": i, "text": "번역" * 500} for i in range(20_000)})
print("the batch committed before the kill")
"""


def test_killed_writer_leaves_all_or_none_of_its_batch(tmp_path):
    path, marker = tmp_path / "cache.sqlite", tmp_path / "killed.json"
    child = run_python(KILLED_WRITER, str(path), str(marker))
    out, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, (out, err)
    killed = json.loads(marker.read_text())
    assert killed["in_transaction"] and killed["wal_bytes"] > 2_000_000  # mid-transaction, on disk
    with RagCache(path) as cache:
        assert cache.stats() == {"committed": 100}  # none of the killed batch, all of the earlier one
        assert cache.get_many("committed", ["c0", "c99"]) == {"c0": {"i": 0, "text": "ü" * 100},
                                                             "c99": {"i": 99, "text": "ü" * 100}}
        cache.put_many("batch", {"b0": "recomputed"})
        assert cache.get_many("batch", ["b0"]) == {"b0": "recomputed"}
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# ------------------------------------------------------------------ refusals
def test_refuses_another_schema_version(tmp_path):
    path = tmp_path / "c.sqlite"
    RagCache(path).put_many("s", {"k": 1})
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '999' WHERE name = 'schema_version'")
    with pytest.raises(ConfigError, match=r"method.cache.path=.*c\.sqlite.*schema version 999.*reads version 1"):
        RagCache(path).get_many("s", ["k"])


def test_refuses_a_sqlite_file_that_is_not_a_cache_and_a_file_that_is_not_sqlite(tmp_path):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE results(x)")
    with pytest.raises(ConfigError, match=r"not a RAG cache .*\['results'\]"):
        RagCache(other).stats()
    text = tmp_path / "notes.txt"
    text.write_text("not a database, " * 100)
    with pytest.raises(ConfigError, match=r"method.cache.path=.*notes\.txt.*not a database"):
        RagCache(text).stats()


def test_refuses_to_mix_journal_modes(tmp_path):
    path = tmp_path / "c.sqlite"
    RagCache(path).put_many("s", {"k": 1})
    with pytest.raises(ConfigError, match="created with journal mode 'wal'.*method.cache.journal_mode=wal"):
        RagCache(path, journal_mode="delete").stats()
    with pytest.raises(ConfigError, match="method.cache.journal_mode='memory'"):
        RagCache(path, journal_mode="memory")


def test_unusable_path_names_it_and_the_config_key(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for path in (blocker / "sub" / "cache.sqlite", tmp_path):  # parent is a file; path is a directory
        with pytest.raises(ConfigError, match=rf"method\.cache\.path={path}"):
            RagCache(path).stats()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_names_the_path_and_the_config_key(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=rf"method\.cache\.path={locked / 'c.sqlite'}.*writable"):
            RagCache(locked / "c.sqlite").stats()
    finally:
        locked.chmod(0o700)
