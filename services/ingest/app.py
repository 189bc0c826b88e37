"""The ingest service's Faust app: its configuration, topics and tables, and the jobs wired to them.

Data flow (agents, in order)::

    interactions (keyed by user) ─► build_features [table user_state] ─┬─► streamrec.user-features
    streamrec-ingest-rekeyed ──────► build_rekeyed_features (the same) ─┤     (a FeatureBatch per run)
                                                                       ├─► interactions.dlq (invalid + reason)
                                                                       ├─► streamrec-ingest-rekeyed
                                                                       │     (valid events not keyed by user)
                                                                       └─► streamrec.item-events
                                                                             (popularity deltas, ~1/s)
    streamrec.control ─► forget_users [tables user_state, erasure_markers] ─► streamrec.user-features
      (every partition)                                                      (FeatureBatch.forgotten)
    streamrec.item-events ─► count_popularity [table item_popularity] ─► (timer) streamrec.popular-items
    items ─► apply_catalog [table item_catalog] ─► streamrec.catalog, items.dlq

Faust's cost is per message, so the input reaches ``build_features`` as *runs*: every record one
fetch returned for a partition, as one message (``transport.py``). A run is validated, folded
into its users' states, and announced as one features message per partition. The changed states
are written to ``user_state`` once per commit, just before it (``write_back.py``), so a run's
offsets are committed only once the states it changed are in the changelog (``commit.py``). An
event keyed by its user id is folded on the partition it arrived on; the others take one hop
through the re-key topic (``rekeying.py``, "the home rule"). A forget request on the control
topic deletes the user's state and holds a marker that drops the user's late events
(``erasure.py``).

Where each job lives (this module only configures and wires them)::

    transport.py            the consumer: runs of records, the commit hook's call, fetch wait
    dead_letters.py         validation of input records; dead letters of those that fail it
    rekeying.py             the home rule: which partition folds an event
    fold.py                 build_features, build_rekeyed_features: a run -> states, features messages
    features.py             the state types: a user's features, an item's popularity, a ranking
    write_back.py           user states held until the commit; the partitions' locks
    changelog_writer.py     table writes in bulk: store, then a changelog record batch per partition
    popularity_deltas.py    popularity of accepted events, pending until sent to item-events
    commit.py               what every offset commit waits for, in order
    erasure.py              forget_users, expire_erasure_markers: forget requests and markers
    item_popularity.py      count_popularity, publish_popular_items
    category_popularity.py  the popular items of each category
    item_catalog.py         apply_catalog: the item catalog and its mirror in memory
    metrics.py              Prometheus metrics, the counters log line, the event loop watch
    table_codec.py          exact-size JSON for the tables' changelog records
    worker.py               the process: start, readiness, bounded stop, restart after a crash

What the wiring must keep: the table names (Faust names their changelog topics
``streamrec-ingest-<table>-changelog``), the agent names (their streams and log lines), the timer
names, and the order of creation. After every rebalance Faust restores every table from its
changelog, then starts each table's recovery callbacks in the order the tables were created
(``IngestTables.declare``); so ``item_popularity``'s callback can rebuild the catalog's mirror
from ``item_catalog`` before it ranks items by category. Agents, then tasks and timers, are
registered in the order of :func:`wire_jobs`, which Faust starts them in.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import faust

from streamrec.ingest.category_popularity import CategoryPopularity
from streamrec.ingest.changelog_writer import ChangelogWriter
from streamrec.ingest.commit import CommitHook
from streamrec.ingest.dead_letters import DeadLetters
from streamrec.ingest.erasure import ERASURE_TABLE_MEMORY_MB, Erasure, ErasureMarkers
from streamrec.ingest.fold import FeatureBuilder, Fold
from streamrec.ingest.item_catalog import ItemCatalog
from streamrec.ingest.item_popularity import ItemPopularityTracker
from streamrec.ingest.metrics import COUNTERS_LOG_SECONDS, IngestCounters, watch_loop
from streamrec.ingest.popularity_deltas import POPULARITY_FLUSH_SECONDS, PendingPopularity
from streamrec.ingest.table_codec import use_exact_size_json
from streamrec.ingest.transport import IngestApp
from streamrec.ingest.write_back import PartitionLocks, StateWriteBack
from streamrec.shared.kafka_config import faust_credentials, require_bootstrap
from streamrec.shared.kafka_topics import INGEST_GROUP, INGEST_REKEYED_TOPIC
from streamrec.shared.settings import Settings

APP_ID = INGEST_GROUP
REKEYED_TOPIC = INGEST_REKEYED_TOPIC  # Faust-internal, created by Faust: events not keyed by user
PRODUCER_MAX_BATCH_BYTES = 900 * 1024  # below the 1 MB a Kafka broker accepts per record batch by default
# Fetched messages waiting for each agent, at most: Faust stops handing fetched messages over while
# a buffer is full, so a backlog stays on the broker. An input message is a run of up to
# ``ingest_batch_max`` records (transport.py): Faust's default of 4,096 messages bounds nothing a
# worker behind a backlog could hold (4,096 runs of 10,000 records).
STREAM_BUFFER_MESSAGES = 8


def kafka_urls(settings: Settings) -> list[str]:
    """The broker URLs of Faust's configuration (raises with one clear line if none is set)."""
    # Only Kafka: ingest never talks to Redis, so it does not require STREAMREC_REDIS_URL.
    return [f"kafka://{server.strip()}" for server in require_bootstrap(settings).split(",")]


def table_store_options(memory_mb: int) -> dict[str, int]:
    """RocksDB options that bound one table partition's memory to about ``memory_mb``.

    Faust's defaults give every partition's database a 2 GiB block cache and three 64 MiB write
    buffers, each filled lazily: ingest's memory then grows with the data until it nears 2.2 GiB per
    partition. Here a quarter of the budget goes to each of two write buffers (they fill within
    seconds under load and stay so), an eighth to the block cache: the cache fills as the table
    grows, so it is what makes memory grow with the data, and reads that miss it are served from the
    operating system's page cache at a few microseconds each (a worker's table reads are one per
    event, a user's state).
    """
    budget = memory_mb * 1024 * 1024
    # Faust mutates the mapping it is given (it pops its own keys), so each call builds a new one.
    return {"block_cache_size": budget // 8, "write_buffer_size": budget // 4, "max_write_buffer_number": 2}


@dataclass(frozen=True)
class IngestTopics:
    """Every topic ingest reads or writes (values and keys as raw bytes, but item-events' JSON)."""

    interactions: faust.TopicT  # the input
    rekeyed: faust.TopicT  # valid events not keyed by their user, re-keyed (rekeying.py)
    dead_letters: faust.TopicT  # interactions.dlq
    user_features: faust.TopicT
    item_events: faust.TopicT  # popularity deltas, one partition
    popular_items: faust.TopicT
    items: faust.TopicT  # the catalog's input
    items_dlq: faust.TopicT
    catalog: faust.TopicT  # catalog changes, for the scorers
    control: faust.TopicT  # forget requests

    @classmethod
    def declare(cls, app: faust.App, settings: Settings) -> IngestTopics:
        """The topics of ``settings``, as ``app``'s."""

        def raw(name: str, **options: object) -> faust.TopicT:
            return app.topic(name, key_serializer="raw", value_serializer="raw", **options)

        return cls(
            interactions=raw(settings.topic_interactions),
            rekeyed=raw(REKEYED_TOPIC, internal=True, partitions=settings.partitions),
            dead_letters=raw(settings.topic_dlq),
            user_features=raw(settings.topic_user_features),
            item_events=app.topic(
                settings.topic_item_events, partitions=1, key_serializer="raw", value_serializer="json"
            ),
            popular_items=raw(settings.topic_popular_items),
            items=raw(settings.topic_items),
            items_dlq=raw(settings.topic_items_dlq),
            catalog=raw(settings.topic_catalog),
            control=raw(settings.topic_control),
        )


@dataclass(frozen=True)
class IngestTables:
    """Ingest's Faust tables (RocksDB, each backed by a changelog topic named after it)."""

    user_state: faust.Table  # per user: features.UserState, keyed by user id
    erasure_markers: faust.Table  # per forgotten user: erasure.Marker, keyed by a hash of the id
    item_popularity: faust.Table  # per item: features.ItemPopularity (one partition)
    item_catalog: faust.Table  # per item: its catalog entry (one partition)

    @classmethod
    def declare(cls, app: faust.App, settings: Settings) -> IngestTables:
        """The tables, created in this order (the order Faust recovers them in)."""
        memory_mb = settings.ingest_table_memory_mb
        user_state = app.Table("user_state", key_type=str, options=table_store_options(memory_mb))
        erasure_markers = app.Table(
            "erasure_markers", key_type=str, options=table_store_options(ERASURE_TABLE_MEMORY_MB)
        )
        item_popularity = app.Table(
            "item_popularity", key_type=str, partitions=1, options=table_store_options(memory_mb)
        )
        item_catalog = app.Table(
            "item_catalog", key_type=str, partitions=1, options=table_store_options(memory_mb)
        )
        return cls(user_state, erasure_markers, item_popularity, item_catalog)


def create_app(settings: Settings) -> IngestApp:
    """The ingest Faust app with its topics, tables, agents and timers (not started)."""
    use_exact_size_json()
    app = configure_app(settings)
    topics = IngestTopics.declare(app, settings)
    wire_jobs(app, settings, topics, IngestTables.declare(app, settings))
    return app


def configure_app(settings: Settings) -> IngestApp:
    """The Faust app and its configuration, with no topic, table or agent yet."""
    app = IngestApp(
        APP_ID,
        broker=kafka_urls(settings),
        broker_credentials=faust_credentials(settings),  # SASL / TLS: shared/kafka_config.py
        store="rocksdb://",
        datadir=str(settings.data_dir / "ingest"),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_disable_leader=True,  # no on_leader timers: ownership of the item partition decides
        web_enabled=settings.ingest_web_port > 0,
        web_port=settings.ingest_web_port or 6066,
        consumer_auto_offset_reset="earliest",  # a new deployment processes the existing stream
        broker_max_poll_records=settings.ingest_batch_max,  # records per fetch: the longest run
        stream_buffer_maxsize=STREAM_BUFFER_MESSAGES,
        producer_linger=0.005,  # the messages of one run share record batches; adds at most 5 ms of latency
        # aiokafka's 16 KB default split one run's changelog (a record per user) into dozens of
        # record batches; the embedded broker's cost grows with record batches, so a run's go in one.
        producer_max_batch_size=PRODUCER_MAX_BATCH_BYTES,
        producer_acks=-1,  # a commit only follows messages the broker has fully acknowledged
        # Longer than a broker's failover, so a coordinator moving costs no rebalance (shared/settings.py).
        broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval_ms / 1000,
        table_standby_replicas=0,  # recovery reads the changelog; standbys only pay off at scale
        # The check compares a table's persisted changelog offset with the topic's end as ListOffsets
        # reports it, which Tansu under-reports (the last record batch's base offset + 1): every
        # restart with local table state then failed with ConsistencyError. What the check protects
        # against, local state that the changelog does not back, is handled by discarding local
        # state after any unclean exit (see ``worker.run``).
        recovery_consistency_check=False,
    )
    app.fetch_wait_ms = settings.ingest_batch_wait_ms  # Tansu answers a fetch only when it is over
    app.run_topics = frozenset({settings.topic_interactions, REKEYED_TOPIC})
    return app


def wire_jobs(app: IngestApp, settings: Settings, topics: IngestTopics, tables: IngestTables) -> None:
    """Build each job's object and register its agents, timers and recovery callbacks with ``app``."""
    counters = IngestCounters()
    owned_partitions = functools.partial(app.active_partitions, settings.topic_interactions)

    # The event path: the fold, and what it shares with erasure and the commit.
    # Every write of these two tables goes through its writer (a record batch per partition).
    user_state = ChangelogWriter(tables.user_state, app.kafka_producer)
    item_popularity = ChangelogWriter(tables.item_popularity, app.kafka_producer)
    app.changelog_writers = (user_state, item_popularity)  # the producer's flush waits for them
    write_back = StateWriteBack(user_state)  # changed states, held until the next commit
    markers = ErasureMarkers(settings.erasure_hold_seconds)
    locks = PartitionLocks()  # a partition's runs and forget requests take turns
    popularity = PendingPopularity(topics.item_events, settings.popularity_half_life_hours, counters)
    feature_builder = FeatureBuilder(
        settings,
        Fold(settings, write_back, markers),
        write_back,
        popularity,
        locks,
        DeadLetters(topics.dead_letters, counters),
        topics.rekeyed,
        topics.user_features,
        counters,
    )
    erasure = Erasure(
        settings,
        markers,
        tables.erasure_markers,
        user_state,
        write_back,
        locks,
        topics.user_features,
        owned_partitions,
        counters,
    )
    commit = CommitHook(write_back, popularity, tables.user_state, owned_partitions)

    # Items: one partition, one owner, for popularity and the catalog alike.
    by_category = CategoryPopularity(settings.top_n, settings.popularity_half_life_hours)
    catalog = ItemCatalog(
        settings,
        tables.item_catalog,
        tables.item_popularity,
        by_category,
        topics.items_dlq,
        topics.catalog,
        counters,
    )
    items = ItemPopularityTracker(
        app,
        settings,
        tables.item_popularity,
        item_popularity,
        catalog,
        by_category,
        topics.popular_items,
        counters,
    )

    app.agent(topics.interactions, name="build_features")(feature_builder.build_features)
    app.agent(topics.rekeyed, name="build_rekeyed_features")(feature_builder.build_rekeyed_features)
    app.agent(topics.control, name="forget_users")(erasure.forget_users)
    app.agent(topics.item_events, name="count_popularity")(items.count_popularity)
    app.agent(topics.items, name="apply_catalog")(catalog.apply_catalog)

    app.timer(erasure.expiry_seconds, name="expire_erasure_markers")(erasure.expire_erasure_markers)
    app.task(watch_loop)
    app.timer(POPULARITY_FLUSH_SECONDS, name="flush_popularity")(popularity.flush)
    app.timer(settings.popular_publish_seconds, name="publish_popular_items")(items.publish_popular_items)
    app.timer(COUNTERS_LOG_SECONDS, name="log_counters")(counters.log_counters)

    # After every rebalance, once every table is recovered.
    tables.erasure_markers.on_recover(erasure.load_erasure_markers)
    tables.user_state.on_recover(commit.recover_pending_popularity)
    tables.item_popularity.on_recover(items.rebuild_ranking)

    app.before_commit = commit.before_commit
    app.on_before_shutdown.connect(counters.log_final_counters)
