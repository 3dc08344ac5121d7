"""The cluster service's state on disk, so that a restarted service carries on where the last one stopped.

One SQLite file under the service's state folder (``cluster.db``, mode 0600: it holds the replicas' message keys,
Raft passwords and the agents' tokens). The cluster writes what a change touched, in one transaction per change:
a row per host and per kernel (JSON: what it needs to rebuild the scheduling core's view and its own records), the
event log's latest records, and a few service settings (its token, its address, the last event's number). What
the hosts report (a replica alive, caught up) is not kept: agents report it again, and logical hosts re-adopt their
replica processes (:meth:`..host_agent.HostAgent.adopt`).

Writes never fail the change that made them: a full or broken disk is logged (and the service goes on with the
state in memory); the next write tries again with everything written since.

A change's transaction only appends to the write-ahead log, without an fsync (``synchronous=NORMAL``). Copying the
log into the database file (a checkpoint, with its fsyncs) happens on a thread of its own (:class:`Checkpointer`),
not inside the commit that crosses SQLite's mark, where the cluster's thread and every change queued behind it
waited for it: 7 ms every two thirds of a second at 100 kernel starts a second, up to 190 ms when the disk was busy.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DB_FILE = "cluster.db"
EVENTS_KEPT = 10_000  # as many as the event log keeps in memory
# Transactions between two checkpoints: 2 to 8 MB of log at the service's sizes (a change rewrites a few pages), as
# SQLite's own mark of 1,000 pages.
CHECKPOINT_EVERY = 200
CATCH_UP_PASSES = 8  # passive passes per checkpoint, while commits land during them

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (name TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kernels (id TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, record TEXT NOT NULL);
"""


@dataclass
class StoredState:
    """What a previous service left: empty for a first start."""

    settings: dict[str, str] = field(default_factory=dict)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    kernels: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.hosts or self.kernels)


class DiskTrouble:
    """A write that keeps failing (a full disk fails every one) is logged once per reason, and its end once."""

    def __init__(self) -> None:
        self.why: str | None = None  # why the last try failed, until one succeeds

    def failed(self, err: Exception, message: str, path: Path) -> None:
        """``message`` takes the path and the error, in that order."""
        if self.why != str(err):
            log.error(message, path, err)
        self.why = str(err)

    def over(self, message: str, path: Path) -> None:
        if self.why is not None:
            log.info(message, path)
            self.why = None


class ClusterStateStore:
    """Thread-safe: changes are written from the cluster's thread, events arrive from any thread."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / DB_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # 0600 from its creation; SQLite gives its -wal and -shm files the database file's mode.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a power cut may lose the last change, never
        self._db.executescript(_SCHEMA)  # corrupt the file; a process crash loses nothing
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's job
        self._lock = threading.Lock()
        self._commits = 0
        self._checkpointer = Checkpointer(self.path, self._lock)
        self._hosts: dict[str, dict[str, Any] | None] = {}
        self._kernels: dict[str, dict[str, Any] | None] = {}
        self._events: list[dict[str, Any]] = []
        self._settings: dict[str, str] = {}
        self.trouble = DiskTrouble()

    def settings(self) -> dict[str, str]:
        """The service's own settings alone (token, address, port): what it needs before the cluster loads."""
        with self._lock:
            return dict(self._db.execute("SELECT name, value FROM settings"))

    def load(self) -> StoredState:
        with self._lock:
            rows = self._db.execute
            return StoredState(
                settings=dict(rows("SELECT name, value FROM settings")),
                hosts={name: json.loads(state) for name, state in rows("SELECT name, state FROM hosts")},
                kernels={kid: json.loads(state) for kid, state in rows("SELECT id, state FROM kernels")},
                events=[
                    json.loads(r)
                    for (r,) in rows("SELECT record FROM events ORDER BY seq DESC LIMIT ?", (EVENTS_KEPT,))
                ][::-1],
            )

    def put_host(self, name: str, state: dict[str, Any] | None) -> None:
        """The host's state to write at the next :meth:`flush` (None: it is gone)."""
        with self._lock:
            self._hosts[name] = state

    def put_kernel(self, kernel_id: str, state: dict[str, Any] | None) -> None:
        with self._lock:
            self._kernels[kernel_id] = state

    def put_setting(self, name: str, value: str) -> None:
        with self._lock:
            self._settings[name] = value

    def add_event(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._events.append(record)

    def flush(self) -> None:
        """Write what was put since the last flush, in one transaction; on failure keep it for the next one."""
        with self._lock:
            if not (self._hosts or self._kernels or self._events or self._settings):
                return
            try:
                self._write()
            except sqlite3.Error as err:
                self.trouble.failed(
                    err,
                    "cannot write the cluster's state to %s: %s; the service goes on with it in memory (free space "
                    "there, or move --state-dir): a restart now would lose what changed since",
                    self.path,
                )
                return
            self.trouble.over("the cluster's state is written to %s again", self.path)
            self._hosts, self._kernels, self._events, self._settings = {}, {}, [], {}

    def _write(self) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            for table, key, pending in (("hosts", "name", self._hosts), ("kernels", "id", self._kernels)):
                for name, state in pending.items():
                    if state is None:
                        db.execute(f"DELETE FROM {table} WHERE {key} = ?", (name,))
                    else:
                        db.execute(f"INSERT OR REPLACE INTO {table} VALUES (?, ?)", (name, json.dumps(state)))
            db.executemany("INSERT OR REPLACE INTO settings VALUES (?, ?)", self._settings.items())
            if self._events:
                db.executemany(
                    "INSERT OR REPLACE INTO events VALUES (?, ?)", [(e["seq"], json.dumps(e)) for e in self._events]
                )
                db.execute("DELETE FROM events WHERE seq <= ?", (self._events[-1]["seq"] - EVENTS_KEPT,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0:
            self._checkpointer.due()

    def clear(self) -> None:
        """Forget everything: the service stopped its kernels and hosts, a next one starts anew."""
        with self._lock:
            self._hosts, self._kernels, self._events, self._settings = {}, {}, [], {}
            self._db.executescript("DELETE FROM hosts; DELETE FROM kernels; DELETE FROM events; DELETE FROM settings;")

    def close(self) -> None:
        self._checkpointer.close()
        with self._lock:
            self._db.close()  # the last connection: SQLite checkpoints what is left and removes the log


class Checkpointer:
    """Copies the write-ahead log into the database file, on its own thread and connection, when told it is due.

    A passive checkpoint never holds up a writer, so the cluster's commits go on meanwhile. The log starts over from
    its beginning only at a commit after a checkpoint that copied all of it, though, and under steady load a commit
    often lands during the copy: the log would grow for as long as the load lasts. So passes follow one another
    while commits land during them, each copying only what the last one left (a few pages, a millisecond), until one
    finds no commit behind it. Only when :data:`CATCH_UP_PASSES` of them could not (a service that commits without
    a pause) does one more pass hold the store's writes (``write_lock``): it waits on the disk's flush, and the
    changes queued behind it wait too (up to 57 ms at 100 kernel starts a second, when every checkpoint ended so)."""

    def __init__(self, path: Path, write_lock: threading.Lock) -> None:
        self.path = path
        self._write_lock = write_lock
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._due = threading.Event()
        self._closing = False
        self.trouble = DiskTrouble()
        self._thread = threading.Thread(target=self._serve, name="state-checkpoint", daemon=True)
        self._thread.start()

    def due(self) -> None:
        self._due.set()

    def _serve(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            if self._closing:
                return
            try:
                self._catch_up()
            except sqlite3.Error as err:
                self.trouble.failed(
                    err,
                    "cannot copy the cluster's write-ahead log into %s: %s; its changes are safe in the log, which "
                    "grows until this succeeds (free space there, or move --state-dir)",
                    self.path,
                )
                continue
            self.trouble.over("the cluster's write-ahead log is copied into %s again", self.path)

    def _catch_up(self) -> None:
        """Passes until one finds the log as the previous one began with it, all copied (nothing was committed
        meanwhile: the next commit starts the log over), or :data:`CATCH_UP_PASSES`; then one holding the writes."""
        began_with = -1
        for _ in range(CATCH_UP_PASSES):
            logged, copied = self._checkpoint()
            if logged == began_with and copied >= logged:
                return
            began_with = logged
        with self._write_lock:
            self._checkpoint()

    def _checkpoint(self) -> tuple[int, int]:
        """One passive pass: the frames in the log when it began (SQLite reports the log as the pass found it), and
        how many of them are in the database file now."""
        _busy, logged, copied = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return logged, copied

    def close(self) -> None:
        self._closing = True
        self._due.set()
        self._thread.join()
        self._db.close()
