"""The ingest service: a Faust app that validates raw events and keeps user features and item popularity.

Data flow (agents, in order)::

    interactions (keyed by user) ─► build_features [table user_state] ─┬─► streamrec.user-features
    streamrec-ingest-rekeyed ──────► build_rekeyed_features (the same) ─┤     (one FeatureBatch per batch)
                                                                       ├─► interactions.dlq (invalid + reason)
                                                                       ├─► streamrec-ingest-rekeyed
                                                                       │     (valid events not keyed by user)
                                                                       └─► streamrec.item-events
                                                                             (popularity deltas, ~1/s)
    streamrec.control ─► forget_users [tables user_state, erasure_markers] ─► streamrec.user-features
      (every partition)                                                      (FeatureBatch.forgotten)
    streamrec.item-events ─► count_popularity [table item_popularity] ─► (timer) streamrec.popular-items

Faust's cost is per message, so the input reaches ``build_features`` as *runs*: every record one
fetch returned for a partition, as one message (``transport.py``). A run is validated, folded
into its users' states, and announced as one features message per partition. The changed states
are written to ``user_state`` once per commit, just before it (``write_back.py``), so a run's
offsets are committed only once the states it changed are in the changelog. An event keyed by
its user id is folded on the partition it arrived on; the others take one hop through the re-key
topic (``bundles.py``, "the home rule"). A forget request on the control topic deletes the
user's state and holds a marker that drops the user's late events (``erasure.py``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import orjson
import prometheus_client as prom
from faust.types import TP

from streamrec.ingest.bundles import (
    DELTA_ITEMS,
    delta_messages,
    is_home,
    partition_for,
    pending_popularity_key,
    popularity_rows,
    read_deltas,
)
from streamrec.ingest.catalog import CategoryPopularity, chunks
from streamrec.ingest.erasure import ErasureMarkers
from streamrec.ingest.features import (
    ItemPopularity,
    PopularityRanking,
    UserState,
    add_item_event,
    apply_event,
    merge_popularity,
)
from streamrec.ingest.table_codec import use_exact_size_json
from streamrec.ingest.transport import IngestApp, RecordRun
from streamrec.ingest.write_back import PartitionEvent, StateWriteBack, as_current_event
from streamrec.shared.catalog import ItemRecord, ServingCatalog, parse_item
from streamrec.shared.events import Interaction, Rejection, RejectReason, normalise_id, parse_event
from streamrec.shared.gc_pauses import freeze_startup_objects, watch_gc_pauses
from streamrec.shared.kafka_config import faust_credentials, require_bootstrap
from streamrec.shared.kafka_topics import INGEST_GROUP, INGEST_REKEYED_TOPIC
from streamrec.shared.logs import get_logger
from streamrec.shared.loop_lag import watch_event_loop
from streamrec.shared.messages import (
    CatalogChange,
    DeadLetter,
    FeatureBatch,
    ForgetUser,
    PopularItems,
    UserSnapshot,
)
from streamrec.shared.ops import start_ops_server
from streamrec.shared.settings import Settings
from streamrec.shared.topic_admin import check_login

log = get_logger(__name__)

APP_ID = INGEST_GROUP
REKEYED_TOPIC = INGEST_REKEYED_TOPIC  # Faust-internal, created by Faust: events not keyed by user
# A features message holds users until their history items + EVENT_UNITS × their events reach
# this: about 8 bytes of JSON per unit, so a message stays near 300 KB, far below Kafka's 1 MB.
FEATURE_BATCH_MAX_UNITS = 40_000
EVENT_UNITS = 20
POPULARITY_FLUSH_SECONDS = 1.0  # popularity deltas go out this often (and before every commit)
# Held user states are written this often per partition (and before every commit): a few record
# batches a second, and no commit-long stall of the event loop.
WRITE_BACK_SECONDS = 0.5
PRODUCER_MAX_BATCH_BYTES = 900 * 1024  # below the 1 MB a Kafka broker accepts per batch by default
COUNTERS_LOG_SECONDS = 30.0
# Every category's popular list is published this often, changed or not: a scorer that started
# since (it reads only the newest popular-items message) gets them all.
POPULAR_CATEGORIES_REFRESH_SECONDS = 60.0
ERASURE_EXPIRY_SECONDS = 60.0  # expired erasure markers are deleted this often (or each hold, if shorter)
ERASURE_TABLE_MEMORY_MB = 4  # the markers are few and small: the smallest RocksDB budget
# Written in the worker's data directory after a clean stop, removed at start: its absence at start
# means the last run crashed (kill -9, OOM, power loss), and the local tables cannot be trusted.
CLEAN_STOP_MARKER = "clean-stop"
# Dead letters keep at most this much of the original payload, so that even a huge message
# (escaped as JSON) fits in one Kafka record.
DEAD_LETTER_PAYLOAD_BYTES = 128 * 1024


# --- metrics (Prometheus; served on STREAMREC_METRICS_PORT, see shared/ops.py) ---------------------
EVENTS = prom.Counter(
    "streamrec_ingest_events_total", "Events read from the input topic, by outcome.", ["outcome"]
)  # outcome: valid, invalid (dead-lettered), accepted (in the features), duplicate (dropped)
INVALID_EVENTS = prom.Counter(
    "streamrec_ingest_invalid_events_total", "Dead-lettered events, by reason.", ["reason"]
)
INVALID_CATALOG = prom.Counter(
    "streamrec_ingest_invalid_catalog_total", "Dead-lettered catalog messages, by reason.", ["reason"]
)
FEATURE_UPDATE_SECONDS = prom.Histogram(
    "streamrec_ingest_feature_update_seconds",
    "Time to fold one bundle of events into its users' states and send the new features.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
EVENT_AGE_SECONDS = prom.Histogram(
    "streamrec_ingest_event_age_seconds",
    "From the event's timestamp to its features update (includes Kafka and queueing).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0),
)
# Bound once: ``labels()`` is a dictionary lookup under a lock, too slow for a per-event path.
EVENTS_VALID, EVENTS_INVALID, EVENTS_ACCEPTED, EVENTS_DUPLICATE = (
    EVENTS.labels(outcome) for outcome in ("valid", "invalid", "accepted", "duplicate")
)
EVENTS_ERASED = EVENTS.labels("erased")  # events of a forgotten user stamped before the request: dropped


@dataclass
class IngestCounters:
    """What this worker did since it started (logged periodically and at shutdown)."""

    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    rekeyed: int = 0
    item_events: int = 0
    popularity_deltas: int = 0
    popular_published: int = 0
    catalog_changes: int = 0
    catalog_rejected: int = 0
    erased: int = 0  # events of forgotten users dropped
    forgotten: int = 0  # forget requests applied (one per partition and request)

    def as_log_fields(self) -> dict[str, Any]:
        """Fields for a structured log line."""
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(self.rejected),
            "rekeyed": self.rekeyed,
            "item_events": self.item_events,
            "popularity_deltas": self.popularity_deltas,
            "popular_published": self.popular_published,
            "catalog_changes": self.catalog_changes,
            "catalog_rejected": self.catalog_rejected,
            "erased": self.erased,
            "forgotten": self.forgotten,
        }


def _kafka_urls(settings: Settings) -> list[str]:
    # Only Kafka: ingest never talks to Redis, so it does not require STREAMREC_REDIS_URL.
    return [f"kafka://{server.strip()}" for server in require_bootstrap(settings).split(",")]


def table_store_options(memory_mb: int) -> dict[str, int]:
    """RocksDB options that bound one table partition's memory to about ``memory_mb``.

    Faust's defaults give every partition's database a 2 GiB block cache and three 64 MiB write
    buffers, each filled lazily: ingest's memory then grows with the data until it nears 2.2 GiB per
    partition. Half the budget goes to the block cache, half to two write buffers.
    """
    budget = memory_mb * 1024 * 1024
    # Faust mutates the mapping it is given (it pops its own keys), so each call builds a new one.
    return {"block_cache_size": budget // 2, "write_buffer_size": budget // 4, "max_write_buffer_number": 2}


def feature_batches(
    users: dict[str, None], states: dict[str, UserState], events: list[Interaction], now: float
) -> list[FeatureBatch]:
    """The features messages of one run: its users' states and accepted events, in chunks of users
    small enough for one Kafka message (``FEATURE_BATCH_MAX_UNITS``)."""
    events_of: dict[str, list[Interaction]] = {}
    for event in events:
        events_of.setdefault(event.user_id, []).append(event)
    batches: list[FeatureBatch] = []
    snapshots: list[UserSnapshot] = []
    chunk_events: list[Interaction] = []
    units = 0
    for user in users:
        state = states[user]
        cost = len(state.history) + EVENT_UNITS * len(events_of[user])
        if snapshots and units + cost > FEATURE_BATCH_MAX_UNITS:
            batches.append(FeatureBatch(snapshots, chunk_events, now))
            snapshots, chunk_events, units = [], [], 0
        snapshots.append(UserSnapshot(user, state.history_item_ids(), state.event_count))
        chunk_events.extend(events_of[user])
        units += cost
    if snapshots:
        batches.append(FeatureBatch(snapshots, chunk_events, now))
    return batches


def create_app(settings: Settings) -> faust.App:
    """The ingest Faust app with its topics, tables, agents and timers (not started)."""
    use_exact_size_json()
    app = IngestApp(
        APP_ID,
        broker=_kafka_urls(settings),
        broker_credentials=faust_credentials(settings),  # SASL / TLS: shared/kafka_config.py
        store="rocksdb://",
        datadir=str(settings.data_dir / "ingest"),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_disable_leader=True,  # no on_leader timers: ownership of the item partition decides
        web_enabled=settings.ingest_web_port > 0,
        web_port=settings.ingest_web_port or 6066,
        consumer_auto_offset_reset="earliest",  # a new deployment processes the existing stream
        broker_max_poll_records=settings.ingest_batch_max,
        producer_linger=0.005,  # batches the messages of one run; adds at most 5 ms of latency
        # aiokafka's 16 KB default split one run's changelog (a record per user) into dozens of
        # record batches; the embedded broker's cost grows with batches, so a run's go in one.
        producer_max_batch_size=PRODUCER_MAX_BATCH_BYTES,
        producer_acks=-1,  # a commit only follows messages the broker has fully acknowledged
        # Longer than a broker's failover, so a coordinator moving costs no rebalance (shared/settings.py).
        broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval_ms / 1000,
        table_standby_replicas=0,  # recovery reads the changelog; standbys only pay off at scale
        # The check compares a table's persisted changelog offset with the topic's end as ListOffsets
        # reports it, which Tansu under-reports (the last batch's base offset + 1): every restart
        # with local table state then failed with ConsistencyError. What the check protects
        # against, local state that the changelog does not back, is handled by discarding local
        # state after any unclean exit (see ``run``).
        recovery_consistency_check=False,
    )
    app.fetch_wait_ms = settings.ingest_batch_wait_ms  # Tansu answers a fetch only when it is over
    counters = IngestCounters()

    raw_events = app.topic(settings.topic_interactions, key_serializer="raw", value_serializer="raw")
    rekeyed_events = app.topic(
        REKEYED_TOPIC,
        internal=True,
        partitions=settings.partitions,
        key_serializer="raw",
        value_serializer="raw",
    )
    app.run_topics = frozenset({settings.topic_interactions, REKEYED_TOPIC})
    dead_letters = app.topic(settings.topic_dlq, key_serializer="raw", value_serializer="raw")
    user_features = app.topic(settings.topic_user_features, key_serializer="raw", value_serializer="raw")
    item_events = app.topic(
        settings.topic_item_events, partitions=1, key_serializer="raw", value_serializer="json"
    )
    popular_items = app.topic(settings.topic_popular_items, key_serializer="raw", value_serializer="raw")
    items_in = app.topic(settings.topic_items, key_serializer="raw", value_serializer="raw")
    items_dlq = app.topic(settings.topic_items_dlq, key_serializer="raw", value_serializer="raw")
    catalog_out = app.topic(settings.topic_catalog, key_serializer="raw", value_serializer="raw")

    user_state = app.Table(
        "user_state", key_type=str, options=table_store_options(settings.ingest_table_memory_mb)
    )
    # Changed user states wait here for the next commit: one changelog batch per partition and
    # commit, not per run (write_back.py).
    write_back = StateWriteBack(user_state)
    # Forgotten users' markers (erasure.py): a hash of the id and the request's time, per partition.
    control = app.topic(settings.topic_control, key_serializer="raw", value_serializer="raw")
    erasure_markers = app.Table(
        "erasure_markers", key_type=str, options=table_store_options(ERASURE_TABLE_MEMORY_MB)
    )
    markers = ErasureMarkers(settings.erasure_hold_seconds)
    # A partition's runs and forget requests take turns: a forget must not land between a run's
    # held states and the features it sends (the erased user would come back with them).
    partition_locks: dict[int, asyncio.Lock] = {}

    def partition_lock(partition: int) -> asyncio.Lock:
        lock = partition_locks.get(partition)
        if lock is None:
            lock = partition_locks[partition] = asyncio.Lock()
        return lock

    # Per partition, the popularity of the events accepted since the last flush; every commit sends
    # it first. Versions before the write-back kept it in user_state under a reserved key, so it is
    # still recovered from there, and the key is emptied at the next commit.
    pending_popularity: dict[int, dict[str, ItemPopularity]] = {}
    clear_owed: set[int] = set()  # partitions whose stored pending popularity must be emptied
    half_life = settings.popularity_half_life_hours

    def dead_letter(record: faust.types.Message, raw: bytes, reason: str, detail: str) -> bytes:
        return DeadLetter(
            reason=reason,
            detail=detail,
            payload=raw[:DEAD_LETTER_PAYLOAD_BYTES].decode("utf-8", errors="replace"),
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            rejected_at=time.time(),
        ).to_json()

    async def send_dead_letter(record: faust.types.Message, raw: bytes, reason: str, detail: str) -> None:
        counters.rejected[reason] += 1
        EVENTS_INVALID.inc()
        INVALID_EVENTS.labels(reason).inc()
        await dead_letters.send(key=record.key, value=dead_letter(record, raw, reason, detail))

    def validate(record: faust.types.Message) -> Interaction | tuple[str, str]:
        """The record's event, or the reason and detail of its dead letter."""
        raw: bytes = record.value if record.value is not None else b""  # tombstones are invalid too
        try:
            result = parse_event(
                raw, max_bytes=settings.max_event_bytes, max_future_seconds=settings.max_future_seconds
            )
        except Exception as exc:  # a bug must not stop the stream: park the event, keep going
            log.exception("event could not be validated", extra={"offset": record.offset})
            return "unexpected_error", repr(exc)
        if isinstance(result, Rejection):
            return str(result.reason), result.detail
        return result

    async def fold_run(event_of_run: faust.types.EventT, rekeyed: bool) -> None:
        """Fold a run (see :func:`fold_run_unlocked`), never while a forget request of its partition runs."""
        async with partition_lock(event_of_run.message.partition):
            await fold_run_unlocked(event_of_run, rekeyed)

    async def fold_run_unlocked(event_of_run: faust.types.EventT, rekeyed: bool) -> None:
        """Fold a run's events into its users' states (held until the commit) and announce them.

        Input runs are validated here and events not keyed by their user go to the re-key topic;
        runs of the re-key topic hold events validated already. Everything up to holding the new
        states is synchronous and the sends come after it, so the two agents folding one partition
        never interleave between reading a user's state and storing it back.
        """
        started = time.perf_counter()
        run: RecordRun = event_of_run.message
        states: dict[str, UserState] = {}  # this run's users
        touched: dict[str, None] = {}  # users with an accepted event, in first-touch order
        accepted: list[Interaction] = []
        away: list[Interaction] = []
        cutoffs: dict[str, float] = {}  # this run's forgotten users: their events up to then are dropped
        refused: list[tuple[faust.types.Message, str, str]] = []
        valid = 0
        if write_back.held_seconds(run.partition) >= WRITE_BACK_SECONDS:
            # States of earlier runs, whose features went out a run ago: the changelog does not get
            # ahead of the features it stands for.
            write_back.write_partition(run.partition)
        pending = pending_popularity.setdefault(run.partition, {})
        for record in run.value:
            if rekeyed:
                try:  # written by ingest itself: only a bug or a foreign producer makes one unreadable
                    event = Interaction.from_dict(orjson.loads(record.value))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    refused.append((record, "unexpected_error", f"unreadable re-keyed record: {exc!r}"))
                    continue
            elif isinstance(checked := validate(record), tuple):
                refused.append((record, *checked))
                continue
            elif not is_home(record.key, checked):
                away.append(checked)
                continue
            else:
                event = checked
            valid += 1
            state = states.get(event.user_id)
            if state is None:
                if (cutoff := markers.cutoff(run.partition, event.user_id)) is not None:
                    cutoffs[event.user_id] = cutoff
                stored = write_back.get(run.partition, event.user_id)
                state = states[event.user_id] = UserState() if stored is None else stored
            if cutoffs and event.timestamp <= cutoffs.get(event.user_id, -math.inf):
                counters.erased += 1
                EVENTS_ERASED.inc()
                continue
            if not apply_event(state, event, settings):
                counters.duplicates += 1
                EVENTS_DUPLICATE.inc()
                continue
            accepted.append(event)
            touched[event.user_id] = None
            item = pending.get(event.item_id)
            if item is None:
                item = pending[event.item_id] = ItemPopularity()
            add_item_event(item, event.timestamp, event.weight, half_life)
        write_back.hold(event_of_run, {user_id: states[user_id] for user_id in touched})
        for record, reason, detail in refused:
            await send_dead_letter(record, record.value or b"", reason, detail)
        if not rekeyed:
            EVENTS_VALID.inc(valid + len(away))
        for event in away:
            counters.rekeyed += 1
            await rekeyed_events.send(
                key=event.user_id.encode(),
                value=orjson.dumps(event.to_dict()),
                partition=partition_for(event.user_id, settings.partitions),
            )
        now = time.time()
        for batch in feature_batches(touched, states, accepted, now):
            await user_features.send(value=batch.to_json(), partition=run.partition)
        for event in accepted:
            EVENT_AGE_SECONDS.observe(max(0.0, now - event.timestamp))
        counters.accepted += len(accepted)
        EVENTS_ACCEPTED.inc(len(accepted))
        FEATURE_UPDATE_SECONDS.observe(time.perf_counter() - started)

    @app.agent(raw_events, name="build_features")
    async def build_features(stream: faust.StreamT[Any]) -> None:
        """Validate and fold each run of input records; Faust acks a run once this body is done with it."""
        async for event in stream.events():
            await fold_run(event, rekeyed=False)

    @app.agent(rekeyed_events, name="build_rekeyed_features")
    async def build_rekeyed_features(stream: faust.StreamT[Any]) -> None:
        """Fold each run of re-keyed events (valid, on their user's home partition)."""
        async for event in stream.events():
            await fold_run(event, rekeyed=True)

    async def forget_user(event: faust.types.EventT) -> None:
        """Erase a user on this control message's partition: held and stored state (the changelog
        gets a tombstone), then tell the scorer and trainer, after any features already sent."""
        partition = event.message.partition
        try:
            request = ForgetUser.from_json(event.message.value)
        except ValueError as exc:
            log.error(
                "skipping an unreadable control message", extra={"partition": partition, "error": str(exc)}
            )
            return
        user = request.user_id
        async with partition_lock(partition):
            with as_current_event(event):  # table reads and writes: this partition's
                known = write_back.get(partition, user) is not None
                write_back.forget(partition, user)
                if known:
                    del user_state[user]  # a tombstone in the changelog
                # On every partition: the user's late events may come through any of them.
                key, marker = markers.mark(partition, user, request.requested_at, time.time())
                erasure_markers[key] = {"partition": partition, **marker.to_dict()}
            # Readers erase what came from this partition before it: only where the user was (and
            # at home, whatever they hold), so that it never overtakes a new history elsewhere.
            if known or partition == partition_for(user, settings.partitions):
                batch = FeatureBatch([], [], time.time(), forgotten=[user])
                await user_features.send(value=batch.to_json(), partition=partition)
        counters.forgotten += 1
        # The marker's hash, not the id: the log must not keep what was erased.
        log.info("user forgotten", extra={"partition": partition, "user_hash": key[:16]})

    @app.agent(control, name="forget_users")
    async def forget_users(stream: faust.StreamT[Any]) -> None:
        """Apply each forget request (``streamrec users forget``, ``DELETE /users/{id}``)."""
        async for event in stream.events():
            await forget_user(event)

    @app.timer(min(ERASURE_EXPIRY_SECONDS, settings.erasure_hold_seconds), name="expire_erasure_markers")
    async def expire_erasure_markers() -> None:
        """Delete the markers whose hold is over (a tombstone each, on their partition).

        No event of a marker's partition need have come since a restart (the forget request's
        offset may be committed), so the partition is named, not taken from its last event."""
        now = time.time()
        for partition in markers.partitions():
            with as_current_event(PartitionEvent(settings.topic_control, partition)):
                for key in markers.expired(partition, now):
                    del erasure_markers[key]

    @erasure_markers.on_recover
    async def load_erasure_markers() -> None:
        """After every rebalance: mirror the markers of the partitions this worker owns now."""
        markers.clear()
        owned = owned_partitions()
        for key, value in erasure_markers.items():
            if int(value["partition"]) in owned:
                markers.load(int(value["partition"]), key, value)
        if len(markers):
            log.info("erasure markers recovered", extra={"markers": len(markers)})

    def owned_partitions() -> set[int]:
        return {
            tp.partition for tp in app.assignor.assigned_actives() if tp.topic == settings.topic_interactions
        }

    async def flush_popularity() -> None:
        """Send the popularity accumulated since the last flush."""
        deltas: dict[str, ItemPopularity] = {}
        for pending in pending_popularity.values():
            for item_id, delta in pending.items():
                merge_popularity(deltas.setdefault(item_id, ItemPopularity()), delta, half_life)
            pending.clear()
        for value in delta_messages(deltas):
            await item_events.send(value=value, partition=0)
            counters.popularity_deltas += 1

    async def before_commit() -> None:
        """Send the popularity, then write the held states: all that the commit covers is then sent
        (Faust flushes the producer before it commits)."""
        await flush_popularity()
        emptied = {
            partition: {pending_popularity_key(partition): popularity_rows({})} for partition in clear_owed
        }
        clear_owed.difference_update(write_back.write(owned_partitions(), emptied))

    @user_state.on_recover
    async def recover_pending_popularity() -> None:
        """After every rebalance: forget what other workers own now, and take over the unsent
        popularity an older version left in user_state for the partitions this worker owns."""
        owned = owned_partitions()
        write_back.retain(owned)
        for partition in set(pending_popularity) - owned:
            del pending_popularity[partition]
        for partition in owned:
            stored = user_state.get(pending_popularity_key(partition))
            if stored and stored.get(DELTA_ITEMS):
                clear_owed.add(partition)
                pending = pending_popularity.setdefault(partition, {})
                for item_id, delta in read_deltas(stored):
                    merge_popularity(pending.setdefault(item_id, ItemPopularity()), delta, half_life)

    app.before_commit = before_commit

    @app.task
    async def watch_loop() -> None:
        """Measure how long the event loop is ever blocked (streamrec_event_loop_lag_seconds)."""
        await watch_event_loop()

    @app.timer(POPULARITY_FLUSH_SECONDS, name="flush_popularity")
    async def flush_popularity_periodically() -> None:
        """Keep the popular list fresh between commits."""
        await flush_popularity()

    # --- item popularity: one partition, one owner ---------------------------------------------

    item_popularity = app.Table(
        "item_popularity",
        key_type=str,
        partitions=1,
        options=table_store_options(settings.ingest_table_memory_mb),
    )
    ranking = PopularityRanking(settings.top_n + settings.history_len, settings.popularity_half_life_hours)
    by_category = CategoryPopularity(settings.top_n, settings.popularity_half_life_hours)
    item_partition = TP(settings.topic_item_events, 0)
    last_published: list[tuple[str, float]] = []
    categories_published_at = [0.0]  # when every category's list was last published

    def owns_item_partition() -> bool:
        return item_partition in app.assignor.assigned_actives()

    @app.agent(item_events, name="count_popularity")
    async def count_popularity(stream: faust.StreamT[dict[str, Any]]) -> None:
        """Merge each message's popularity deltas into the items' decayed scores (one write per item)."""
        async for value in stream:
            try:  # written by ingest itself: only a bug or a foreign producer makes one unreadable
                deltas = read_deltas(value)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("skipping an unreadable item-events message", extra={"error": repr(exc)})
                continue
            changed: dict[str, ItemPopularity] = {}
            for item_id, delta in deltas:
                popularity = changed.get(item_id)
                if popularity is None:
                    stored = item_popularity.get(item_id)
                    popularity = changed[item_id] = (
                        ItemPopularity() if stored is None else ItemPopularity.from_dict(stored)
                    )
                merge_popularity(popularity, delta, half_life)
                counters.item_events += delta.count
            for item_id, popularity in changed.items():
                item_popularity[item_id] = popularity.to_dict()
                ranking.update(item_id, popularity)
                by_category.update(item_id, popularity, catalog.categories_of(item_id))

    @item_popularity.on_recover
    async def rebuild_ranking() -> None:
        """After every rebalance: rebuild the in-memory rankings from the tables if we own them."""
        ranking.clear()
        by_category.clear()
        last_published.clear()
        categories_published_at[0] = 0.0
        if not owns_item_partition():
            return
        rebuild_catalog()
        for item_id, stored in item_popularity.items():
            popularity = ItemPopularity.from_dict(stored)
            ranking.update(item_id, popularity)
            by_category.update(item_id, popularity, catalog.categories_of(item_id))
        log.info("popularity ranking rebuilt", extra={"candidates": len(ranking.keys)})

    @app.timer(settings.popular_publish_seconds, name="publish_popular_items")
    async def publish_popular_items() -> None:
        """Publish the top items when this worker owns the item partition and the list changed."""
        if app.rebalancing or not owns_item_partition():
            return
        now = time.time()
        top = [(item, score) for item, score in ranking.top() if catalog.available(item, now)]
        everything = now - categories_published_at[0] >= POPULAR_CATEGORIES_REFRESH_SECONDS
        lists = by_category.lists_to_publish(catalog, now, ranking.latest_event_time, everything)
        if everything:
            categories_published_at[0] = now
        if not lists and (not top or top == last_published):
            return
        for part in chunks(lists) or [{}]:
            message = PopularItems(items=top, generated_at=now, categories=part)
            await popular_items.send(key=b"popular", value=message.to_json())
            counters.popular_published += 1
        last_published[:] = top

    # --- item catalog: one partition, one owner (the same worker as item popularity) --------------

    item_catalog = app.Table(
        "item_catalog",
        key_type=str,
        partitions=1,
        options=table_store_options(settings.ingest_table_memory_mb),
    )
    catalog = ServingCatalog()  # availability and categories of item_catalog, for the popular lists

    def rebuild_catalog() -> None:
        """The in-memory catalog from the table (called by rebuild_ranking: every table is
        recovered before any table's recovery callbacks run)."""
        catalog.clear()
        for item_id, stored in item_catalog.items():
            catalog.apply(item_id, ItemRecord.from_dict(stored))

    @app.agent(items_in, name="apply_catalog")
    async def apply_catalog(stream: faust.StreamT[Any]) -> None:
        """Validate each catalog message, keep it in ``item_catalog`` and announce it to the scorers;
        invalid ones go to the catalog's dead-letter topic with the reason."""
        async for event in stream.events():
            record = event.message
            change = catalog_change(record)
            if isinstance(change, Rejection):
                counters.catalog_rejected += 1
                INVALID_CATALOG.labels(str(change.reason)).inc()
                raw = record.value or b""
                await items_dlq.send(
                    key=record.key, value=dead_letter(record, raw, change.reason, change.detail)
                )
                continue
            if change.record is None:
                item_catalog.pop(change.item_id, None)
            else:
                item_catalog[change.item_id] = change.record.to_dict()
            catalog.apply(change.item_id, change.record)
            if change.record is not None and (stored := item_popularity.get(change.item_id)) is not None:
                by_category.update(change.item_id, ItemPopularity.from_dict(stored), change.record.categories)
            counters.catalog_changes += 1
            await catalog_out.send(key=change.item_id.encode(), value=change.to_json())

    def catalog_change(record: faust.types.Message) -> CatalogChange | Rejection:
        """The change a catalog message makes, or why it is refused. A tombstone (no value) removes
        the entry of the item its key names."""
        if record.value is None:
            key = record.key.decode("utf-8", errors="replace") if record.key else None
            item_id = None if key is None else normalise_id(key)
            if item_id is None:
                return Rejection(RejectReason.BAD_ID, "a tombstone (no value) needs the item id as its key")
            return CatalogChange(item_id, None)
        try:
            parsed = parse_item(record.value, max_bytes=settings.max_event_bytes)
        except Exception as exc:  # a bug must not stop the stream: park the message, keep going
            log.exception("catalog message could not be validated", extra={"offset": record.offset})
            return Rejection(RejectReason.INVALID_FIELD, f"unexpected error: {exc!r}")
        return parsed if isinstance(parsed, Rejection) else CatalogChange(parsed.item_id, parsed)

    # --- observability ---------------------------------------------------------------------------

    @app.timer(COUNTERS_LOG_SECONDS, name="log_counters")
    async def log_counters() -> None:
        """Periodic counters line."""
        log.info("ingest counters", extra=counters.as_log_fields())

    @app.on_before_shutdown.connect
    async def log_final_counters(sender: faust.App, **kwargs: Any) -> None:
        log.info("ingest stopping", extra=counters.as_log_fields())

    return app


class IngestWorker(faust.Worker):
    """A Faust worker that logs through our handlers and announces when it is ready."""

    def __init__(self, app: faust.App, stop_timeout: float, **kwargs: Any) -> None:
        # override_logging=False: keep the root handler configure_logging installed (JSON lines);
        # quiet + no spinner: no banner or progress output on stdout.
        super().__init__(app, quiet=True, override_logging=False, redirect_stdouts=False, **kwargs)
        self.spinner = None
        self.started_at = time.monotonic()
        self.ready = False
        self.stop_timeout = stop_timeout
        self._stop_deadline: threading.Timer | None = None

    def _schedule_shutdown(self, signal: Any) -> None:
        """Faust's graceful stop on SIGINT/SIGTERM, bounded: after ``stop_timeout`` the process exits.

        Faust's stop commits offsets and flushes the producer, which waits for the broker without
        end; a worker told to stop while its broker is gone would never exit. The deadline runs in a
        thread, since the event loop may be the thing that is stuck.
        """
        if self._stop_deadline is None:
            self._stop_deadline = threading.Timer(self.stop_timeout, self._give_up_stopping)
            self._stop_deadline.daemon = True
            self._stop_deadline.start()
        super()._schedule_shutdown(signal)

    def _give_up_stopping(self) -> None:
        consumer = self.app.consumer
        # What the next start reads again: everything after each partition's committed offset.
        reread = {
            f"{tp.topic}[{tp.partition}]": {
                "from_offset": committed,
                "read_up_to": consumer._read_offset.get(tp),
            }
            for tp, committed in sorted(consumer._committed_offset.items())
        }
        log.error(
            "ingest did not stop within the stop timeout: exiting without a clean stop "
            "(the next start rebuilds the tables and reads again from the committed offsets)",
            extra={"stop_timeout_s": self.stop_timeout, "next_start_reads_again": reread},
        )
        logging.shutdown()  # the line above must reach the log before the process ends
        os._exit(1)

    def readiness(self) -> str | None:
        """None once the worker joined its group and recovered its tables (for /readyz)."""
        return None if self.ready else "starting: joining the consumer group, recovering tables"

    async def on_startup_finished(self) -> None:
        """Called by Faust once the consumer joined the group and tables are recovered."""
        await super().on_startup_finished()
        freeze_startup_objects()
        watch_gc_pauses()
        self.ready = True
        log.info(
            "ingest ready",
            extra={"startup_seconds": round(time.monotonic() - self.started_at, 2), "app_id": APP_ID},
        )


def run(settings: Settings) -> None:
    """Run the ingest worker until SIGINT/SIGTERM, then stop gracefully (commit offsets, flush)."""
    _kafka_urls(settings)  # fail with one clear line before anything starts
    check_login(settings)  # likewise for a refused SASL login / TLS handshake
    (settings.data_dir / "ingest").mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = create_app(settings)
    log.info(
        "ingest starting",
        extra={"bootstrap": settings.kafka_bootstrap, "input": settings.topic_interactions, "app_id": APP_ID},
    )
    marker = settings.data_dir / "ingest" / CLEAN_STOP_MARKER
    discard_tables_after_crash(Path(app.conf.tabledir), marker)
    worker = IngestWorker(app, stop_timeout=settings.ingest_stop_timeout_seconds)
    start_ops_server(settings, alive=lambda: None, ready=worker.readiness)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:  # mode exits via SystemExit; a clean stop is not an error for callers
        if exc.code not in (0, None):
            raise
    marker.touch()  # only reached after Faust stopped cleanly: offsets committed, changelogs flushed


def discard_tables_after_crash(tables_dir: Path, marker: Path) -> None:
    """Delete the local table state unless the previous run stopped cleanly (``marker`` exists).

    Faust writes a table change to RocksDB at once but sends it to the changelog asynchronously,
    and it records the changelog offset a store holds only when the broker acknowledged it. After
    kill -9 the store can therefore hold changes the changelog never got, for events whose offsets
    were not committed either: on restart those events are re-delivered, found in the user's
    de-duplication window and dropped, so the features and item events they should have produced
    are never sent. Rebuilding the tables from the changelogs (what Kafka Streams does after an
    unclean exit) makes the state exactly what was durably announced, and the re-delivered events
    are applied again, once.
    """
    if tables_dir.exists() and not marker.exists():
        log.warning(
            "the last run did not stop cleanly: rebuilding tables from their changelogs",
            extra={"tables": str(tables_dir)},
        )
        shutil.rmtree(tables_dir)
    marker.unlink(missing_ok=True)  # a crash of this run must be detected at the next start
