"""JudgeCache: judge verdicts kept in a SQLite file, shared across restarts, threads and processes.

A verdict is stored under ``cache_key(parts)``: the sha256 of the canonical JSON of ``parts`` (for RULER:
the prompt version, the rubric text, the judge identity and every judged conversation with its id). The
value is a JSON object. The cache stores what it is given; :class:`~stateset_agents.rewards.ruler.RulerReward`
puts only valid, complete judgements in it, never failures.

Concurrency: the database runs in WAL mode (readers do not block the writer); every operation opens its own
connection with a busy timeout, so a process or thread that finds the write lock taken waits for it instead
of failing; a write is one ``INSERT OR REPLACE`` inside ``BEGIN IMMEDIATE ... COMMIT``. WAL needs a local
file system (not NFS or SMB).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["JudgeCache", "cache_key"]

_SCHEMA = ("CREATE TABLE IF NOT EXISTS judgements ("
           "key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)")


def cache_key(parts: Mapping[str, Any]) -> str:
    """sha256 (hex) of ``parts`` as canonical JSON (sorted keys, no whitespace, UTF-8)."""
    raw = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


class JudgeCache:
    """A key -> JSON-object store in one SQLite file.

    Args:
        path: the database file (``~`` is expanded); created (with its parent folders) if missing.
        timeout: seconds to wait for another writer's lock before giving up.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        if self.path.is_dir():
            raise ConfigError(f"judge cache path {str(self.path)!r} is a folder; pass a file path such as "
                              f"{str(self.path / 'judge_cache.sqlite')!r}")
        if timeout <= 0:
            raise ConfigError(f"timeout={timeout} must be > 0 (seconds to wait for another writer)")
        self.timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    def _open(self) -> None:
        # Switching a new file to WAL takes an exclusive lock, and SQLite does not call the busy handler for it:
        # two processes opening a fresh cache at the same moment get "database is locked" at once. Retry that
        # (and only that) with backoff until `timeout`.
        deadline = time.monotonic() + self.timeout
        delay = 0.01
        while True:
            try:
                with closing(sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)) as conn:
                    conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
                    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                        conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute(_SCHEMA)
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() + delay > deadline:
                    raise self._error("open", e) from e
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
            except sqlite3.Error as e:
                raise self._error("open", e) from e

    def _error(self, op: str, e: sqlite3.Error) -> ConfigError:
        return ConfigError(f"judge cache {str(self.path)!r}: {op} failed: {type(e).__name__}: {e}. "
                           "Point cache= at a writable SQLite file on a local disk (a new path starts an empty "
                           f"cache); if other processes hold the lock longer than {self.timeout} s, pass a "
                           "larger JudgeCache(path, timeout=...)")

    @contextmanager
    def _connect(self, op: str) -> Iterator[sqlite3.Connection]:
        try:
            # isolation_level=None: no implicit transactions; writes open their own with BEGIN IMMEDIATE.
            with closing(sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)) as conn:
                conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
                yield conn
        except sqlite3.Error as e:
            raise self._error(op, e) from e

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored object for ``key``, or None when there is none."""
        with self._connect("read") as conn:
            row = conn.execute("SELECT value FROM judgements WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            value = json.loads(row[0])
        except json.JSONDecodeError as e:
            raise ConfigError(f"judge cache {str(self.path)!r}: the entry {key[:12]}... is not JSON ({e}); "
                              "delete the file to start a fresh cache") from e
        if not isinstance(value, dict):
            raise ConfigError(f"judge cache {str(self.path)!r}: the entry {key[:12]}... is not a JSON object; "
                              "delete the file to start a fresh cache")
        return value

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        """Store ``value`` (a JSON-serialisable mapping) under ``key``, replacing any previous one."""
        raw = json.dumps(dict(value), ensure_ascii=False, sort_keys=True)
        with self._connect("write") as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT OR REPLACE INTO judgements (key, value, created) VALUES (?, ?, ?)",
                             (key, raw, time.time()))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def __len__(self) -> int:
        with self._connect("count") as conn:
            return int(conn.execute("SELECT COUNT(*) FROM judgements").fetchone()[0])

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __repr__(self) -> str:
        return f"JudgeCache({str(self.path)!r})"
