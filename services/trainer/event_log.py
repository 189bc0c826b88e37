"""The trainer's durable local copy of the interaction stream (``topic_user_features``).

One SQLite database holds the events and, per topic partition, the next Kafka offset to read.
Each consumed batch is written in ONE transaction together with its new offsets, so the log and
its position in the stream always move together: a crash loses nothing and counts nothing twice,
and a restart resumes at the stored offsets instead of re-reading the topic. Kafka's committed
offsets (group ``streamrec-trainer``) are written too, but only for visibility (lag monitoring):
the database is the source of truth.

Ingest announces an event again when it crashed after announcing it and before committing its
input (it reads the input again from its last commit): the log keeps one row per user and event id
(a unique index), so such an event is logged once. Events without an id cannot be told apart and
are all kept.

Only the most recent ``keep_events`` events are kept (by default ``settings.train_window_events``,
the training window); older ones are pruned in the same transactions. A message's ``forgotten``
users (``streamrec users forget``) lose every event the log holds of them, in the transaction of
that message's offsets, so a model trained afterwards never sees them.

The files on disk (the SQLite schema, the directory lock, reading the window in chunks) are in
services/trainer/event_store.py; this module consumes the topic into them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from tqdm import tqdm

from streamrec.shared.kafka_config import client_config
from streamrec.shared.kafka_topics import TRAINER_GROUP
from streamrec.shared.logs import get_logger
from streamrec.shared.messages import FeatureBatchDecodeError, decode_feature_batch
from streamrec.shared.settings import ConfigError, Settings
from streamrec.shared.topic_admin import KafkaUnavailable, check_login
from streamrec.trainer.event_store import (
    DB_FILE,
    LOCK_FILE,
    WINDOW_COLUMNS,
    frames,
    lock_directory,
    log_directory,
    open_database,
    prune_oldest,
    stored_offsets,
    typed,
)

log = get_logger(__name__)

CONSUMER_GROUP = TRAINER_GROUP

# catch_up() shows a progress bar only when at least this many messages are behind.
PROGRESS_BAR_MIN_MESSAGES = 20_000
# How often poll() looks for partitions added to the topic.
METADATA_REFRESH_SECONDS = 30.0


class EventLog:
    """Consumes ``topic_user_features`` into a local SQLite log of interaction events.

    Single writer: the directory is locked while the log is open. Not thread-safe.
    Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        settings: Settings,
        directory: Path | None = None,
        *,
        keep_events: int | None = None,
    ) -> None:
        if settings.kafka_bootstrap is None:
            raise ConfigError("STREAMREC_KAFKA_BOOTSTRAP not set: the trainer reads its events from Kafka")
        check_login(settings)  # a refused SASL login / TLS handshake in one line, at once
        self.topic = settings.topic_user_features
        self.directory = directory or log_directory(settings)
        self.keep_events = keep_events or settings.train_window_events
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_handle = lock_directory(self.directory / LOCK_FILE)
        self._db = open_database(self.directory / DB_FILE)
        self._count = int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        self._offsets = stored_offsets(self._db, self.topic)
        self._partitions: list[int] = []
        self._start_offsets: dict[int, int] = {}  # low watermarks: where unread partitions begin
        self._metadata_checked_at = 0.0
        self._missing_topic_reported = False
        self._consumer = _new_consumer(settings)
        try:
            self._refresh_assignment()
        except KafkaException as exc:
            self.close()
            raise KafkaUnavailable(
                f"Kafka at {settings.kafka_bootstrap} is unreachable ({exc.args[0].str()}): "
                "check STREAMREC_KAFKA_BOOTSTRAP and that the broker runs"
            ) from None
        log.info(
            "event log opened",
            extra={"path": str(self.directory / DB_FILE), "events": self._count, "topic": self.topic},
        )

    # --- consuming ----------------------------------------------------------------------

    def poll(self, max_messages: int = 1000, timeout: float = 1.0) -> int:
        """Consume up to ``max_messages`` (waiting at most ``timeout`` s); return the events appended."""
        # Until the topic exists, look for it often; afterwards only for added partitions.
        refresh_every = METADATA_REFRESH_SECONDS if self._partitions else 2.0
        if time.monotonic() - self._metadata_checked_at > refresh_every:
            try:
                self._refresh_assignment()
            except KafkaException as exc:  # transient: keep reading the partitions we have
                log.warning("topic metadata refresh failed", extra={"error": exc.args[0].str()})
        if not self._partitions:
            time.sleep(timeout)  # topic missing or empty of partitions: nothing to wait on
            return 0
        messages = self._consumer.consume(num_messages=max_messages, timeout=timeout)
        rows: list[tuple[Any, ...]] = []
        # Erased users, in stream order: (rows appended before the erasure, user id).
        erasures: list[tuple[int, str]] = []
        next_offsets: dict[int, int] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise RuntimeError(f"Kafka consumer failed: {error.str()}")
                log.warning("kafka consumer error", extra={"error": error.str()})
                continue
            next_offsets[message.partition()] = message.offset() + 1
            try:
                batch = decode_feature_batch(message.value())
                events = batch.events
            except FeatureBatchDecodeError as exc:  # a bad message must not stall the log forever: skip it
                log.warning(
                    "unreadable user-features message skipped",
                    extra={"partition": message.partition(), "offset": message.offset(), "error": str(exc)},
                )
                continue
            rows.extend(
                (event.user_id, event.item_id, event.event_type, event.timestamp, event.value, event.event_id)
                for event in events
            )
            erasures.extend((len(rows), user_id) for user_id in batch.forgotten)
        if not next_offsets:
            return 0
        return self._append(rows, next_offsets, erasures)

    def catch_up(self, timeout: float | None = 600.0, stop: threading.Event | None = None) -> int:
        """Consume until the end of every partition as of now; return the events appended.

        "The end" is the larger of the watermark the broker lists now and the one its fetch
        responses report: Tansu's listed watermark is only the last batch's base offset + 1, while
        its fetch responses carry the true log end. Stops early after ``timeout`` seconds (with a
        warning; ``None`` waits as long as it takes) or as soon as ``stop`` is set.
        """
        self._refresh_assignment()
        listed = self._high_watermarks()

        def behind() -> int:
            return sum(
                max(0, max(high, self._fetched_end(p)) - self._position(p)) for p, high in listed.items()
            )

        remaining = behind()
        if not remaining:
            return 0
        deadline = None if timeout is None else time.monotonic() + timeout
        appended = 0
        with tqdm(
            total=remaining,
            desc="trainer catching up",
            unit="msg",
            disable=remaining < PROGRESS_BAR_MIN_MESSAGES,
            leave=False,
        ) as progress:
            while remaining > 0 and not (stop is not None and stop.is_set()):
                if deadline is not None and time.monotonic() > deadline:
                    log.warning(
                        "catch-up timed out with messages still unread",
                        extra={"behind_messages": remaining, "timeout_s": timeout},
                    )
                    break
                new = self.poll(max_messages=5000, timeout=0.5)
                appended += new
                remaining = behind()
                progress.total = max(progress.total, progress.n + new + remaining)
                progress.update(new)
        log.info("event log caught up", extra={"appended": appended, "events": self._count})
        return appended

    def _fetched_end(self, partition: int) -> int:
        """Log end from the client's last fetch response for ``partition`` (-1 before any fetch)."""
        _low, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, partition), cached=True)
        return high if high >= 0 else -1

    # --- reading --------------------------------------------------------------------------

    def count(self) -> int:
        """Events currently in the log."""
        return self._count

    def last_seq(self) -> int:
        """Sequence number of the newest event ever appended (0 if none). Grows by one per event
        and survives pruning and restarts, so differences count new arrivals."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return int(row[0]) if row else 0

    def window(self, max_events: int | None = None) -> pd.DataFrame:
        """The most recent ``max_events`` events (default: ``keep_events``), oldest first.

        Columns: user_id, item_id, event_type (str), timestamp (float epoch s), value (float, NaN
        when absent). Order is arrival order, which is time order within each user (a user's events
        share one partition) but only roughly across users.
        """
        limit = max_events or self.keep_events
        cursor = self._db.execute(
            "SELECT user_id, item_id, event_type, timestamp, value FROM "
            "(SELECT seq, user_id, item_id, event_type, timestamp, value FROM events "
            " ORDER BY seq DESC LIMIT ?) ORDER BY seq",
            (limit,),
        )
        chunks = list(frames(cursor))
        if not chunks:
            return typed(pd.DataFrame(columns=WINDOW_COLUMNS))
        return pd.concat(chunks, ignore_index=True)

    def offsets(self) -> dict[int, int]:
        """Partition -> next offset to read, as stored with the events."""
        return dict(self._offsets)

    def positions(self) -> dict[int, int]:
        """Partition -> offset the log has read up to (past skipped control records), per partition."""
        return {partition: self._position(partition) for partition in self._partitions}

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the Kafka consumer and the database, and release the directory lock."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None  # type: ignore[assignment]
        if self._db is not None:
            self._db.close()
            self._db = None  # type: ignore[assignment]
        if self._lock_handle is not None:
            self._lock_handle.close()  # closing the file releases the flock
            self._lock_handle = None  # type: ignore[assignment]

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------------

    def _append(
        self,
        rows: list[tuple[Any, ...]],
        next_offsets: dict[int, int],
        erasures: list[tuple[int, str]] | None = None,
    ) -> int:
        """Write events and their offsets in one transaction, then tell Kafka (best effort); returns
        the events appended (an event the log holds already, by user and event id, is not).

        ``erasures`` (position in ``rows``, user id): forgotten users whose events up to that
        point are deleted, in the same transaction (a later event of the user is kept: it is
        the user's new history)."""
        removed = 0
        inserted = 0
        with self._db:  # one transaction: commits on success, rolls back on error
            # An event logged already is not inserted at all (an insert the unique index refused
            # would still use up a sequence number, and last_seq() counts events).
            insert = (
                "INSERT INTO events (user_id, item_id, event_type, timestamp, value, event_id) "
                "SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE ?6 IS NULL OR NOT EXISTS "
                "(SELECT 1 FROM events WHERE user_id = ?1 AND event_id = ?6)"
            )
            start = 0
            for position, user_id in erasures or ():
                inserted += self._db.executemany(insert, rows[start:position]).rowcount
                start = position
                removed += self._db.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
            inserted += self._db.executemany(insert, rows[start:]).rowcount
            self._db.executemany(
                "INSERT INTO offsets (topic, partition, next_offset) VALUES (?, ?, ?) "
                "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                [(self.topic, p, offset) for p, offset in next_offsets.items()],
            )
            pruned = prune_oldest(self._db, self.keep_events, self._count + inserted - removed)
        self._count += inserted - pruned - removed
        if erasures:
            # secure_delete zeroed the deleted rows in the database; the WAL still holds the pages
            # as they were until a checkpoint: truncating it leaves no copy of them on disk.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            log.info("erased users' events deleted", extra={"users": len(erasures), "events": removed})
        self._offsets.update(next_offsets)
        self._commit_to_kafka(next_offsets)
        return inserted

    def _commit_to_kafka(self, next_offsets: dict[int, int]) -> None:
        try:
            self._consumer.commit(
                offsets=[TopicPartition(self.topic, p, offset) for p, offset in next_offsets.items()],
                asynchronous=True,
            )
        except KafkaException as exc:  # visibility only; the database holds the real position
            log.debug("offset commit to kafka failed", extra={"error": str(exc)})

    def _position(self, partition: int) -> int:
        """Next offset the log will read from ``partition``, including skipped control records."""
        stored = self._offsets.get(partition, self._start_offsets.get(partition, 0))
        # The consumer's position also moves past records it never hands out (transaction markers).
        (position,) = self._consumer.position([TopicPartition(self.topic, partition)])
        return max(stored, position.offset)

    def _high_watermarks(self) -> dict[int, int]:
        """Partition -> high watermark; also notes each partition's low watermark as its start."""
        highs: dict[int, int] = {}
        for p in self._partitions:
            low, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
            self._start_offsets[p] = low
            highs[p] = high
        return highs

    def _refresh_assignment(self) -> None:
        """Assign every partition of the topic: known ones at their stored offset, new ones from the start."""
        self._metadata_checked_at = time.monotonic()
        metadata = self._consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        partitions = sorted(metadata.partitions) if metadata is not None and not metadata.error else []
        if partitions == self._partitions:
            return
        if not partitions:
            if not self._missing_topic_reported:  # once, not every retry
                log.warning("topic not found; waiting for it", extra={"topic": self.topic})
                self._missing_topic_reported = True
            return
        assignment = []
        for p in partitions:
            offset = self._offsets.get(p, OFFSET_BEGINNING)
            low, _high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
            # A stored offset beyond the end (topic deleted and recreated) is NOT judged from the
            # high watermark, which some brokers under-report (Tansu: last batch's base offset + 1):
            # the fetch gets OFFSET_OUT_OF_RANGE and auto.offset.reset=earliest starts it over.
            if offset != OFFSET_BEGINNING and offset < low:
                log.warning(
                    "events expired from Kafka before the trainer read them",
                    extra={"topic": self.topic, "partition": p, "lost_messages": low - offset},
                )
                offset = low
                self._offsets[p] = low
            elif offset == OFFSET_BEGINNING and low > 0:
                # A new log (or one rebuilt after its directory was lost) starts at the partition's
                # first message still held: the ``low`` before it are gone (retention, DeleteRecords).
                log.warning(
                    "events expired from Kafka before the trainer read them",
                    extra={"topic": self.topic, "partition": p, "lost_messages": low},
                )
            self._start_offsets[p] = low
            assignment.append(TopicPartition(self.topic, p, offset))
        # Re-assigning all (not just new) partitions is safe: every read so far is stored already.
        self._consumer.assign(assignment)
        log.info(
            "event log partitions assigned",
            extra={
                "topic": self.topic,
                "partitions": len(partitions),
                "added": len(partitions) - len(self._partitions),
            },
        )
        self._partitions = partitions


def _new_consumer(settings: Settings) -> Any:
    return Consumer(
        client_config(
            settings,
            {
                "group.id": CONSUMER_GROUP,
                # Offsets live in SQLite with the events; Kafka's copy is written explicitly.
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
            },
        )
    )
