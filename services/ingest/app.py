"""The ingest service: a Faust app that validates raw events and keeps user features and item popularity.

Data flow (agents, in order)::

    interactions (any key) ─► validate_events ─┬─► interactions.dlq                (invalid + reason)
                                               └─► streamrec-ingest-events-by-user  (bundles, by user partition)
    streamrec-ingest-events-by-user ─► build_features [table user_state]
                                               ├─► streamrec.user-features      (one per accepted event, key = user_id)
                                               └─► streamrec.item-events        (one bundle per bundle)
    streamrec.item-events ─► count_popularity [table item_popularity] ─► (timer) streamrec.popular-items

Why the extra hop through ``streamrec-ingest-events-by-user``: a Faust table lives on the partition
of the event being processed, so all of a user's events must arrive on one partition. Producers
may key by anything, leave messages unkeyed, or hash keys differently (librdkafka's default
partitioner is not the Java client's), so ingest never trusts the input partitioning: it
validates on whatever partition an event lands, then re-publishes the normalised events to the
partition of their user id. The internal hops carry bundles of events (``bundles.py``): Faust's cost
is per message, and one message per event per hop was what limited a worker's throughput.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import prometheus_client as prom
from faust.types import TP

from ..shared.contracts import DeadLetter, PopularItems, UserFeatures
from ..shared.events import Interaction, Rejection, parse_event
from ..shared.kafka_config import faust_credentials, require_bootstrap
from ..shared.logs import get_logger
from ..shared.ops import start_ops_server
from ..shared.settings import Settings
from ..topics import check_login
from .bundles import (
    event_bundle,
    group_by_partition,
    item_event_bundle,
    unbundle_events,
    unbundle_item_events,
)
from .features import ItemPopularity, PopularityRanking, UserState, add_item_event, apply_event
from .transport import IngestApp

log = get_logger(__name__)

APP_ID = "streamrec-ingest"
EVENTS_BY_USER_TOPIC = f"{APP_ID}-events-by-user"  # Faust-internal, created by Faust
COUNTERS_LOG_SECONDS = 30.0
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


@dataclass
class IngestCounters:
    """What this worker did since it started (logged periodically and at shutdown)."""

    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    item_events: int = 0
    popular_published: int = 0

    def as_log_fields(self) -> dict[str, Any]:
        """Fields for a structured log line."""
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(self.rejected),
            "item_events": self.item_events,
            "popular_published": self.popular_published,
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


def create_app(settings: Settings) -> faust.App:
    """The ingest Faust app with its topics, tables, agents and timers (not started)."""
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
        producer_linger=0.005,  # batches the messages of one bundle; adds at most 5 ms of latency
        producer_acks=-1,  # a commit only follows messages the broker has fully acknowledged
        # Tansu holds a first join for half the session timeout; a short one also fails over faster.
        broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.kafka_session_timeout_ms / 3000,
        table_standby_replicas=0,  # recovery reads the changelog; standbys only pay off at scale
        # The check compares a table's persisted changelog offset with the topic's end as ListOffsets
        # reports it, which Tansu under-reports (the last batch's base offset + 1): every restart
        # with local table state then failed with ConsistencyError. What the check protects
        # against, local state that the changelog does not back, is handled by discarding local
        # state after any unclean exit (see ``run``).
        recovery_consistency_check=False,
    )
    app.fetch_wait_ms = settings.kafka_fetch_wait_ms
    counters = IngestCounters()

    raw_events = app.topic(settings.topic_interactions, key_serializer="raw", value_serializer="raw")
    dead_letters = app.topic(settings.topic_dlq, key_serializer="raw", value_serializer="raw")
    events_by_user = app.topic(
        EVENTS_BY_USER_TOPIC,
        internal=True,
        partitions=settings.partitions,
        key_serializer="raw",
        value_serializer="json",
    )
    user_features = app.topic(settings.topic_user_features, key_serializer="raw", value_serializer="raw")
    item_events = app.topic(
        settings.topic_item_events, partitions=1, key_serializer="raw", value_serializer="json"
    )
    popular_items = app.topic(settings.topic_popular_items, key_serializer="raw", value_serializer="raw")

    # --- validation: any partition, any key ---------------------------------------------------

    async def send_dead_letter(message: faust.types.Message, raw: bytes, reason: str, detail: str) -> None:
        counters.rejected[reason] += 1
        EVENTS_INVALID.inc()
        INVALID_EVENTS.labels(reason).inc()
        letter = DeadLetter(
            reason=reason,
            detail=detail,
            payload=raw[:DEAD_LETTER_PAYLOAD_BYTES].decode("utf-8", errors="replace"),
            source_topic=message.topic,
            source_partition=message.partition,
            source_offset=message.offset,
            rejected_at=time.time(),
        )
        await dead_letters.send(key=message.key, value=letter.to_json())

    @app.agent(raw_events, name="validate_events")
    async def validate_events(stream: faust.StreamT[bytes]) -> None:
        """Parse raw messages a batch at a time; dead-letter the invalid, bundle the valid by user partition.

        ``take_events`` acks a batch only after this loop body finished with it, and Faust flushes
        the producer before it commits offsets, so a crash never commits an event whose bundle
        was not yet sent.
        """
        async for batch in stream.take_events(
            settings.ingest_batch_max, within=settings.ingest_batch_wait_ms / 1000
        ):
            valid: list[Interaction] = []
            for event in batch:
                raw: bytes = event.value if event.value is not None else b""  # tombstones are invalid too
                try:
                    result = parse_event(
                        raw,
                        max_bytes=settings.max_event_bytes,
                        max_future_seconds=settings.max_future_seconds,
                    )
                except Exception as exc:  # a bug must not stop the stream: park the event, keep going
                    log.exception("event could not be validated", extra={"offset": event.message.offset})
                    await send_dead_letter(event.message, raw, "unexpected_error", repr(exc))
                    continue
                if isinstance(result, Rejection):
                    await send_dead_letter(event.message, raw, str(result.reason), result.detail)
                else:
                    valid.append(result)
            EVENTS_VALID.inc(len(valid))
            for partition, events in group_by_partition(valid, settings.partitions).items():
                await events_by_user.send(value=event_bundle(events), partition=partition)

    # --- user features: partitioned by user_id ------------------------------------------------

    user_state = app.Table(
        "user_state", key_type=str, options=table_store_options(settings.ingest_table_memory_mb)
    )

    @app.agent(events_by_user, name="build_features")
    async def build_features(stream: faust.StreamT[dict[str, Any]]) -> None:
        """Fold each bundle into its users' states (one table write per user); announce features and items."""
        async for bundle in stream:
            started = time.perf_counter()
            states: dict[str, UserState] = {}  # this bundle's users, written back once at the end
            accepted: list[Interaction] = []
            for event in unbundle_events(bundle):
                state = states.get(event.user_id)
                if state is None:
                    stored = user_state.get(event.user_id)
                    state = states[event.user_id] = (
                        UserState() if stored is None else UserState.from_dict(stored)
                    )
                if not apply_event(state, event, settings):
                    counters.duplicates += 1
                    EVENTS_DUPLICATE.inc()
                    continue
                accepted.append(event)
                features = UserFeatures(
                    user_id=event.user_id,
                    event=event,
                    history=state.history_item_ids(),
                    event_count=state.event_count,
                    updated_at=time.time(),
                )
                await user_features.send(key=event.user_id, value=features.to_json())
                EVENT_AGE_SECONDS.observe(max(0.0, features.updated_at - event.timestamp))
            for user_id, state in states.items():
                user_state[user_id] = state.to_dict()
            if accepted:
                await item_events.send(value=item_event_bundle(accepted), partition=0)
            counters.accepted += len(accepted)
            EVENTS_ACCEPTED.inc(len(accepted))
            FEATURE_UPDATE_SECONDS.observe(time.perf_counter() - started)

    # --- item popularity: one partition, one owner ---------------------------------------------

    item_popularity = app.Table(
        "item_popularity",
        key_type=str,
        partitions=1,
        options=table_store_options(settings.ingest_table_memory_mb),
    )
    ranking = PopularityRanking(settings.top_n + settings.history_len, settings.popularity_half_life_hours)
    item_partition = TP(settings.topic_item_events, 0)
    last_published: list[tuple[str, float]] = []

    def owns_item_partition() -> bool:
        return item_partition in app.assignor.assigned_actives()

    @app.agent(item_events, name="count_popularity")
    async def count_popularity(stream: faust.StreamT[dict[str, Any]]) -> None:
        """Add each bundle's item events to the items' decayed scores (one table write per item)."""
        async for bundle in stream:
            changed: dict[str, ItemPopularity] = {}
            for item_id, timestamp, weight in unbundle_item_events(bundle):
                popularity = changed.get(item_id)
                if popularity is None:
                    stored = item_popularity.get(item_id)
                    popularity = changed[item_id] = (
                        ItemPopularity() if stored is None else ItemPopularity.from_dict(stored)
                    )
                add_item_event(popularity, timestamp, weight, settings.popularity_half_life_hours)
                counters.item_events += 1
            for item_id, popularity in changed.items():
                item_popularity[item_id] = popularity.to_dict()
                ranking.update(item_id, popularity)

    @item_popularity.on_recover
    async def rebuild_ranking() -> None:
        """After every rebalance: rebuild the in-memory ranking from the table if we own it."""
        ranking.clear()
        last_published.clear()
        if not owns_item_partition():
            return
        for item_id, stored in item_popularity.items():
            ranking.update(item_id, ItemPopularity.from_dict(stored))
        log.info("popularity ranking rebuilt", extra={"candidates": len(ranking.keys)})

    @app.timer(settings.popular_publish_seconds, name="publish_popular_items")
    async def publish_popular_items() -> None:
        """Publish the top items when this worker owns the item partition and the list changed."""
        if app.rebalancing or not owns_item_partition():
            return
        top = ranking.top()
        if not top or top == last_published:
            return
        await popular_items.send(key=b"popular", value=PopularItems(items=top).to_json())
        last_published[:] = top
        counters.popular_published += 1

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

    def __init__(self, app: faust.App, **kwargs: Any) -> None:
        # override_logging=False: keep the root handler configure_logging installed (JSON lines);
        # quiet + no spinner: no banner or progress output on stdout.
        super().__init__(app, quiet=True, override_logging=False, redirect_stdouts=False, **kwargs)
        self.spinner = None
        self.started_at = time.monotonic()
        self.ready = False

    def readiness(self) -> str | None:
        """None once the worker joined its group and recovered its tables (for /readyz)."""
        return None if self.ready else "starting: joining the consumer group, recovering tables"

    async def on_startup_finished(self) -> None:
        """Called by Faust once the consumer joined the group and tables are recovered."""
        await super().on_startup_finished()
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
    worker = IngestWorker(app)
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
