"""The event log's files: one SQLite database of events and offsets, and the directory's lock.

The schema and how the database is opened (WAL, zeroed deletes, the schema version), the lock that
keeps one trainer per directory (and tells who holds it), and the window read back in chunks.
services/trainer/event_log.py consumes ``topic_user_features`` into this database.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from streamrec.shared.settings import ConfigError, Settings

DB_FILE = "events.sqlite"
LOCK_FILE = "events.lock"
WINDOW_COLUMNS = ["user_id", "item_id", "event_type", "timestamp", "value"]
SCHEMA_VERSION = 2  # 2: events.event_id, unique per user (1 had no ids; its rows keep none)
# Rows fetched from SQLite per step when building window(); bounds the temporary Python objects.
WINDOW_FETCH_ROWS = 200_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order; never reused
    user_id    TEXT NOT NULL,
    item_id    TEXT NOT NULL,
    event_type TEXT NOT NULL,
    timestamp  REAL NOT NULL,
    value      REAL,
    event_id   TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS events_user_event ON events (user_id, event_id)
    WHERE event_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS offsets (
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""


class EventLogLocked(ConfigError):
    """Another process already owns this event log directory."""


def log_directory(settings: Settings) -> Path:
    """The event log directory of a trainer on ``settings``' data dir."""
    return settings.data_dir / "trainer"


def log_owner(directory: Path) -> int | None:
    """The pid of the process that holds ``directory``'s event log open (a running trainer), or None."""
    try:
        handle = open(directory / LOCK_FILE)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: the owner wrote its pid into the file
            text = handle.read().strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


def lock_directory(path: Path) -> Any:
    handle = open(path, "a+")  # noqa: SIM115 - held open for the life of the EventLog
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise EventLogLocked(
            f"{path.parent} is in use by another trainer: give each trainer its own STREAMREC_DATA_DIR"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")  # who holds it: log_owner() tells `streamrec train --once`
    handle.flush()
    return handle


def open_database(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level="DEFERRED")
    # WAL + synchronous=NORMAL: a crash may lose the last batches, but events and offsets are lost
    # together (same transaction), so they are simply read again from Kafka.
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    # Deleted rows are overwritten with zeros, not left in free pages: an erased user's events
    # (``streamrec users forget``) must not stay readable in the file.
    db.execute("PRAGMA secure_delete=ON")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, 1, SCHEMA_VERSION):
        db.close()
        raise ConfigError(
            f"{path} has schema version {version}, expected {SCHEMA_VERSION}: delete it to rebuild"
        )
    if version == 1:  # the rows logged so far have no event id: they stay as they are
        db.execute("ALTER TABLE events ADD COLUMN event_id TEXT")
    db.executescript(_SCHEMA)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    db.commit()
    return db


def frames(cursor: sqlite3.Cursor) -> Iterator[pd.DataFrame]:
    while rows := cursor.fetchmany(WINDOW_FETCH_ROWS):
        yield typed(pd.DataFrame.from_records(rows, columns=WINDOW_COLUMNS))


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype(
        {"user_id": "str", "item_id": "str", "event_type": "str", "timestamp": "float64", "value": "float64"}
    )


def stored_offsets(db: sqlite3.Connection, topic: str) -> dict[int, int]:
    """Partition -> the next offset to read of ``topic``, as stored with the events."""
    rows = db.execute("SELECT partition, next_offset FROM offsets WHERE topic = ?", (topic,))
    return {int(p): int(offset) for p, offset in rows}


def prune_oldest(db: sqlite3.Connection, keep_events: int, count: int) -> int:
    """Delete all but the newest ``keep_events`` events once ``count`` is well over it (inside the
    caller's transaction); returns the events deleted."""
    # Deleting in chunks of ~5% (not per batch) keeps the deletes rare and cheap.
    slack = max(1, min(keep_events // 20, 100_000))
    if count < keep_events + slack:
        return 0
    cursor = db.execute(
        "DELETE FROM events WHERE seq <= (SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?)",
        (keep_events,),
    )
    return cursor.rowcount
