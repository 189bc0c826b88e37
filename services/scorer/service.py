"""The scorer: keeps every active user's top-N in Redis fresh.

One synchronous loop per process:

1. ``topic_user_features`` (consumer group ``streamrec-scorer``; several scorers share the
   partitions) is read in micro-batches of up to ``scorer_batch_size`` messages, waiting at most
   ``scorer_batch_wait_ms`` after the first one. Each message is a ``FeatureBatch``: the users one
   ingest batch touched, with their histories. Only each user's latest history in a micro-batch counts.
2. The users are scored ``scorer_batch_size`` at a time with the served ONNX model (``personal``),
   or, with no model yet or no item the model knows, the popular list minus the user's items
   (``fallback``).
3. Each chunk's lists are written with one Redis pipeline; their offsets are committed about once
   a second (and on revoke and stop), always after the write:
   nothing is acknowledged before it is in Redis (at-least-once; a re-delivered user is re-scored).

Every scorer also reads ``topic_popular_items`` and ``topic_models`` on its own (partition 0
assigned explicitly, outside the group): popular items from the latest message, so a restarted
scorer has the fallback at once; models by following announcements after reconciling with the
registry's PROMOTED pointer (also re-read periodically, in case an announcement was lost). A
rollback is announced the same way: the scorer serves whatever was announced or promoted last.

A new model is swapped in only after it is verified, loaded and warmed up; a broken one is refused
and the old one keeps serving. After a swap the recently seen users (a bounded LRU of their latest
histories) are re-scored in bounded chunks between real-time batches; so are they when the first
popular list arrives before any model (users seen earlier had nothing to be written yet).

Similar items (services/scorer/similar_items.py): after a swap, the scorer that owns partition 0 of
the user features writes every item's nearest items in the new model's embeddings, in chunks
between real-time batches (one scorer computes them; the others skip the work). Every scorer
counts co-occurrences of the items the model does not know in its users' histories and writes their
fallback lists periodically.
"""

from __future__ import annotations

import math
import signal
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from types import FrameType
from typing import TypeVar

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, Message, TopicPartition

from ..shared.contracts import (
    SCORER_GROUP,
    CachedList,
    CachedListDecodeError,
    CatalogChange,
    FeatureBatchDecodeError,
    ModelAnnouncement,
    PopularItems,
    RedisKeys,
    decode_feature_batch,
)
from ..shared.gc_pauses import freeze_startup_objects, watch_gc_pauses
from ..shared.kafka_config import client_config
from ..shared.logs import get_logger
from ..shared.ops import start_ops_server
from ..shared.redis_connection import SyncRedis, connect
from ..shared.registry import ModelIntegrityError, ModelRegistry
from ..shared.settings import ConfigError, Settings
from ..topics import existing_topics
from .catalog_replica import CatalogPublisher, CatalogReplica
from .metrics import (
    CONSUMER_LAG,
    FRESHNESS_SECONDS,
    LISTS_WRITTEN,
    MODEL_IN_USE,
    MODELS_REFUSED,
    RESCORE_QUEUE,
    SCORING_SECONDS,
)
from .model_runtime import ServedModel
from .popular_lists import PopularLists
from .recent_users import PartitionTail, RecentUsers
from .redis_writer import RedisWriter, Stopped
from .scoring import ListScorer, ScoredLists
from .similar_items import FALLBACK_WRITE_SECONDS, CoOccurrence, SimilarListWriter, load_item_embeddings

log = get_logger(__name__)

IDLE_POLL_SECONDS = (
    0.25  # longest block waiting for traffic; bounds the reaction time to control messages (a hidden item)
)
# At most this many user-features messages are read back per partition gained (a message holds the
# users of one ingest run: a dozen in a live stream, thousands in a backlog), within 10 s.
RECALL_MESSAGES = 5000
COMMIT_SECONDS = 1.0  # offsets of written batches are committed at most this often (and on revoke, stop)
PROMOTED_CHECK_SECONDS = 10.0  # re-read the registry's PROMOTED this often (covers lost announcements)
PROGRESS_LOG_SECONDS = 60.0
STARTUP_FALLBACK_VERSIONS = 3  # earlier promoted versions tried at start-up when PROMOTED is refused

T = TypeVar("T")


class ScorerService:
    """The scorer loop and its state: served model, popular fallback, recent users, consumers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bootstrap, redis_url = settings.require_servers()
        self.keys = RedisKeys(settings.redis_prefix)
        self.stopping = threading.Event()
        client = connect(settings, url=redis_url, socket_timeout=10.0, connect_timeout=5.0)
        self.writer = RedisWriter(client, redis_url, self.stopping)
        self.registry = ModelRegistry(settings.model_dir)  # type: ignore[arg-type]  # set by Settings
        self.ttl = settings.recs_ttl_seconds or None

        self.model: ServedModel | None = None
        self.catalog = CatalogReplica()
        self.catalog_publisher = CatalogPublisher(self.catalog, self.writer, self.keys)
        self.popular_lists = PopularLists(
            self.writer, self.keys, self.catalog, settings.top_n, settings.recs_format
        )
        self.scorer = ListScorer(self.catalog, settings.top_n, settings.recs_format)
        self.recent = RecentUsers(settings.scorer_recent_users)
        # User -> whether to check Redis first: users read back from Kafka on assignment are
        # re-scored only if their list is not from the served model (the partition's previous owner
        # may have re-scored them already).
        self.rescore_queue: OrderedDict[str, bool] = OrderedDict()
        self.tail: PartitionTail | None = None
        self.scored_to: dict[int, int] = {}  # partition -> next offset after the last batch written
        self.refused_versions: set[str] = set()
        self.promoted_seen: str | None = None
        self.assigned_partitions: set[int] = set()

        self.users: Consumer | None = None
        self.control: Consumer | None = None
        self._next_promoted_check = 0.0
        self._next_progress_log = time.monotonic() + PROGRESS_LOG_SECONDS
        self._rescore_started = 0.0
        self._next_rescore_at = 0.0
        self.counts = {"batches": 0, "messages": 0, "personal": 0, "fallback": 0, "rescored": 0, "erased": 0}
        # Offsets of batches already in Redis, committed together about once a second: a commit per
        # micro-batch was a broker round trip each, on the path of the next batch.
        self.owed_offsets: dict[tuple[str, int], int] = {}
        self.committed_at = time.monotonic()
        self.similar_writer: SimilarListWriter | None = None  # the served model's lists, being written
        self.cooccurrence = CoOccurrence()  # neighbours of the items the served model does not know
        self._next_fallback_write = time.monotonic() + FALLBACK_WRITE_SECONDS

    # --- lifecycle ---------------------------------------------------------------------------

    def readiness(self) -> str | None:
        """None when serving; otherwise why not (for /readyz)."""
        if self.users is None:
            return "starting: connecting to Kafka and Redis, loading the model"
        if not self.writer.ok:
            return "Redis unreachable: writes are being retried"
        return None

    def request_stop(self) -> None:
        """Ask the loop to finish the batch in hand, commit and return (safe from a signal handler)."""
        self.stopping.set()

    def start(self) -> None:
        """Check the servers, load the registry's PROMOTED model and connect the consumers."""
        self._check_topics()
        self.writer.ping()
        self.catalog_publisher.load()
        self._reconcile_with_registry()
        self.control = self._control_consumer()
        self.users = Consumer(
            client_config(
                self.settings,
                {
                    "group.id": SCORER_GROUP,
                    "enable.auto.commit": False,  # committed by hand, after the lists are in Redis
                    "auto.offset.reset": "earliest",
                    "client.id": f"streamrec-scorer-{uuid.uuid4().hex[:8]}",
                    # Tansu answers a fetch some time after data arrives, later with a longer wait,
                    # and holds a first join for half the session timeout.
                    "fetch.wait.max.ms": self.settings.kafka_fetch_wait_ms,
                    "session.timeout.ms": self.settings.kafka_session_timeout_ms,
                    "heartbeat.interval.ms": self.settings.kafka_heartbeat_interval_ms,
                    "on_commit": self._on_commit,
                },
            )
        )
        self.tail = PartitionTail(
            Consumer(
                client_config(
                    self.settings,
                    {
                        "group.id": SCORER_GROUP,  # to read its committed offsets; never subscribes
                        "enable.auto.commit": False,
                        "client.id": f"streamrec-scorer-tail-{uuid.uuid4().hex[:8]}",
                    },
                )
            ),
            self.settings.topic_user_features,
        )
        self.users.subscribe(
            [self.settings.topic_user_features], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        log.info(
            "scorer started",
            extra={
                "topic": self.settings.topic_user_features,
                "group": SCORER_GROUP,
                "model_version": self.model.version if self.model else None,
                "batch_size": self.settings.scorer_batch_size,
                "batch_wait_ms": self.settings.scorer_batch_wait_ms,
            },
        )

    def run(self) -> None:
        """Score until :meth:`request_stop`; then finish the batch in hand and commit it."""
        assert self.users is not None, "start() first"
        while not self.stopping.is_set():
            try:
                self._poll_control()
                self._check_promoted_periodically()
                # With re-scoring due, do not block waiting for traffic: alternate the two.
                idle = min(IDLE_POLL_SECONDS, self._seconds_until_rescore(), self._seconds_until_similar())
                batch = self._collect_batch(idle)
                if batch:
                    self._process_user_batch(batch)
                if self.owed_offsets and time.monotonic() - self.committed_at >= COMMIT_SECONDS:
                    self._commit_owed(wait=False)  # also when traffic stopped: the last batches get committed
                self._rescore_step()
                self._similar_step()
                self.catalog_publisher.write_if_due(owns_partition_0=0 in self.assigned_partitions)
            except Stopped:
                log.warning("stopping with Redis unreachable: the uncommitted batch will be re-delivered")
                break
            self._log_progress()
        self._commit_owed()  # the batches written so far (the one Redis refused is not among them)

    def close(self) -> None:
        """Leave the consumer group and close every connection (idempotent)."""
        started = self.users is not None
        for consumer in (self.users, self.control, self.tail.consumer if self.tail else None):
            if consumer is not None:
                try:
                    consumer.close()
                except (KafkaException, RuntimeError) as exc:
                    log.warning("closing a Kafka consumer failed", extra={"error": str(exc)})
        self.users = self.control = self.tail = None
        self.writer.close()
        if started:
            log.info("scorer stopped", extra=self.counts)

    # --- start-up ----------------------------------------------------------------------------

    def _check_topics(self) -> None:
        topics = existing_topics(self.settings)
        needed = [
            self.settings.topic_user_features,
            self.settings.topic_popular_items,
            self.settings.topic_models,
            self.settings.topic_catalog,
        ]
        missing = [name for name in needed if name not in topics]
        if missing:
            raise ConfigError(
                f"topic(s) {', '.join(missing)} do not exist on Kafka at {self.bootstrap}: "
                "run `streamrec topics create` (or start ingest first)"
            )

    def _control_consumer(self) -> Consumer:
        """A consumer outside the group, so that every scorer sees every popular list and model."""
        consumer = Consumer(
            client_config(
                self.settings,
                {
                    # Required by the client, never joined: assign() does not use the group.
                    "group.id": f"streamrec-scorer-control-{uuid.uuid4().hex}",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "latest",
                },
            )
        )
        popular = TopicPartition(self.settings.topic_popular_items, 0)
        low, high = consumer.get_watermark_offsets(popular, timeout=10.0)
        # The last popular list already published is the fallback to serve right now.
        popular.offset = high - 1 if high > low else OFFSET_BEGINNING
        # Models: the registry's PROMOTED was read just before; follow announcements from here on.
        models = TopicPartition(self.settings.topic_models, 0, OFFSET_END)
        # The catalog: from the first change the one in Redis does not hold.
        offset = self.catalog.catalog.offset
        catalog = TopicPartition(
            self.settings.topic_catalog, 0, offset + 1 if offset >= 0 else OFFSET_BEGINNING
        )
        consumer.assign([popular, models, catalog])
        return consumer

    def _reconcile_with_registry(self) -> None:
        promoted = self.promoted_seen = self.registry.promoted_version()
        if promoted is None:
            log.info(
                "no promoted model in the registry yet: serving popular items",
                extra={"registry": str(self.registry.root)},
            )
            return
        self._switch_model(promoted, reason="registry PROMOTED")
        # A refused PROMOTED must not leave a restarted scorer without any model: fall back to the
        # newest earlier *promoted* version that verifies (a running scorer would have kept serving
        # it); rejected and rolled-back versions are never candidates.
        earlier = [version for version in reversed(self.registry.promotion_stack()) if version != promoted]
        for version in earlier[:STARTUP_FALLBACK_VERSIONS]:
            if self.model is not None:
                break
            self._switch_model(version, reason="PROMOTED refused: newest usable earlier promoted version")

    # --- consumer-group callbacks ------------------------------------------------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gained = sorted({tp.partition for tp in partitions} - self.assigned_partitions)
        self.assigned_partitions |= set(gained)
        log.info("partitions assigned", extra={"partitions": sorted(self.assigned_partitions)})
        if not gained or self.tail is None or self.recent.capacity == 0:
            return
        try:
            committed = self.tail.committed(gained)
        except KafkaException as exc:
            log.warning("cannot read the committed offsets to recall users", extra={"error": str(exc)})
            return
        # Before any of their messages is scored: what the real-time path sees next is newer.
        for partition in gained:
            self._recall_users(partition, committed.get(partition, -1))

    def _recall_users(self, partition: int, committed: int) -> None:
        """Remember the users the partition's previous owner scored last, up to the group's
        ``committed`` offset (unless this scorer was that owner), and queue them for re-scoring if
        a model is served (their lists may be from an older one)."""
        assert self.tail is not None
        started = time.monotonic()
        if committed == self.scored_to.get(partition):
            return  # this scorer scored the partition last: what it remembers is current
        self.recent.forget_partition(partition)
        share = max(1, self.recent.capacity // max(1, self.settings.partitions))
        histories = (
            self.tail.latest_histories(partition, committed, min(share, RECALL_MESSAGES), share)
            if committed >= 0
            else {}
        )
        recalled = [
            user
            for user, history in reversed(histories.items())  # most recent first: each goes behind
            if self.recent.remember_older(user, history, partition)
        ]
        if self.model is not None:
            if recalled and not self.rescore_queue:
                self._rescore_started = time.monotonic()
            for user in recalled:
                self.rescore_queue.setdefault(user, True)
        log.info(
            "recent users of a partition recalled",
            extra={
                "partition": partition,
                "users": len(recalled),
                "seconds": round(time.monotonic() - started, 2),
            },
        )

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Every batch is written before the next poll; what is owed is only its commit.
        self._commit_owed({tp.partition for tp in partitions})
        self.assigned_partitions -= {tp.partition for tp in partitions}
        log.info("partitions revoked", extra={"revoked": sorted(tp.partition for tp in partitions)})

    # --- real-time path ----------------------------------------------------------------------

    def _collect_batch(self, idle_timeout: float) -> list[Message]:
        """Up to scorer_batch_size messages: wait for the first, then at most batch_wait for the rest."""
        assert self.users is not None
        first = self.users.poll(idle_timeout)
        if first is None:
            return []
        messages = [first]
        room = self.settings.scorer_batch_size - 1
        if room > 0:
            messages += self.users.consume(room, timeout=self.settings.scorer_batch_wait_ms / 1000)
        return messages

    def _process_user_batch(self, messages: list[Message]) -> None:
        """Score the latest features of each user in the batch, write them, then commit."""
        assert self.users is not None
        next_offsets: dict[tuple[str, int], int] = {}
        histories: dict[str, list[str]] = {}  # each user's latest, in the order users were seen
        updated_at: dict[str, float] = {}
        erased: dict[str, None] = {}  # users forgotten in this batch: their lists are deleted first
        for message in messages:
            if error := message.error():
                if error.fatal():
                    raise KafkaException(error)
                log.warning("Kafka consumer error", extra={"error": error.str()})
                continue
            next_offsets[(message.topic(), message.partition())] = message.offset() + 1
            try:
                batch = decode_feature_batch(message.value())
            except FeatureBatchDecodeError as exc:
                # A message no scorer can read will not get better: skip it (and commit past it).
                log.error(
                    "skipping unreadable user-features message",
                    extra={"partition": message.partition(), "offset": message.offset(), "error": str(exc)},
                )
                continue
            for user in batch.users:
                histories[user.user_id] = user.history  # later messages of the same user win
                updated_at[user.user_id] = batch.updated_at
                self.recent.remember(user.user_id, user.history, message.partition())
                self.rescore_queue.pop(user.user_id, None)  # scored now, with the current model
            # In message order: an earlier message's list of an erased user is not written, a
            # later one (the user's new history) is, after the delete.
            for user_id in batch.forgotten:
                erased[user_id] = None
                histories.pop(user_id, None)
                updated_at.pop(user_id, None)
                self.recent.forget(user_id)
                self.rescore_queue.pop(user_id, None)
        if erased:
            self._delete_lists(list(erased))
        self._observe_cooccurrence(histories.values())

        # Users with histories of about the same length share an inference: its input is as wide
        # as its longest history, and the model's cost grows with that width.
        users = sorted(histories, key=lambda user: len(histories[user]))
        chunk = self.settings.scorer_batch_size  # one ONNX run each, written before the next runs
        for start in range(0, len(users), chunk):
            part = users[start : start + chunk]
            self._write_lists(self._score({user: histories[user] for user in part}), trigger="event")
            written_at = time.time()
            for user in part:
                FRESHNESS_SECONDS.observe(max(0.0, written_at - updated_at[user]))
        self.owed_offsets.update(next_offsets)
        self.scored_to.update({partition: offset for (_topic, partition), offset in next_offsets.items()})
        self._update_lag(next_offsets)
        self.counts["batches"] += 1
        self.counts["messages"] += len(messages)

    def _commit_owed(self, partitions: set[int] | None = None, wait: bool = True) -> None:
        """Commit the offsets of written batches (of ``partitions`` only, if given). With ``wait``
        False the commit is sent and the loop goes on (the periodic commit: a replicated commit took
        10-330 ms on three brokers, a stall of every list behind it); a failure is then logged by
        :meth:`_on_commit`. Revoke and stop wait: the next owner starts from what they commit."""
        assert self.users is not None
        owed = {
            key: offset
            for key, offset in self.owed_offsets.items()
            if partitions is None or key[1] in partitions
        }
        for key in owed:
            del self.owed_offsets[key]
        self.committed_at = time.monotonic()
        if not owed:
            return
        offsets = [TopicPartition(topic, part, offset) for (topic, part), offset in owed.items()]
        try:
            self.users.commit(offsets=offsets, asynchronous=not wait)
        except KafkaException as exc:
            self._on_commit(exc.args[0] if exc.args else exc, offsets)

    @staticmethod
    def _on_commit(error: object, _offsets: list[TopicPartition]) -> None:
        """The outcome of a commit (a consumer callback for those not waited for)."""
        if error is not None:
            # E.g. the partition moved to another scorer meanwhile: it re-delivers and re-scores.
            log.warning("offset commit failed; the batches will be re-scored", extra={"error": str(error)})

    # --- scoring -----------------------------------------------------------------------------

    def _score(self, histories: dict[str, list[str]]) -> ScoredLists:
        """The users' lists with the served model and popular list (timed and counted)."""
        with SCORING_SECONDS.time():
            scored = self.scorer.score(histories, self.model, self.popular_lists.popular, time.time())
        self.counts["personal"] += scored.personal
        self.counts["fallback"] += scored.fallback
        return scored

    # --- Redis -------------------------------------------------------------------------------

    def _write_lists(self, scored: ScoredLists, trigger: str) -> None:
        """SET every user's list in one pipeline, retrying until it succeeds (or Stopped).
        ``trigger`` (event, rescore) labels the metric."""
        if not scored.values:
            return
        values = {self.keys.recs(user): value for user, value in scored.values.items()}
        self.writer.set_many(f"write {len(values)} recommendation lists", values, ttl=self.ttl)
        for source, count in (("personal", scored.personal), ("fallback", scored.fallback)):
            if count:
                LISTS_WRITTEN.labels(source, trigger).inc(count)

    def _delete_lists(self, users: list[str]) -> None:
        """DEL erased users' lists, retrying until it succeeds (or Stopped)."""
        keys = [self.keys.recs(user) for user in users]
        self.writer.delete(f"delete {len(keys)} erased users' lists", keys)
        self.counts["erased"] += len(keys)
        log.info("erased users' lists deleted", extra={"users": len(keys)})

    def _update_lag(self, next_offsets: dict[tuple[str, int], int]) -> None:
        """Lag after a batch: the largest cached high watermark minus next offset of its partitions."""
        assert self.users is not None
        lag = 0
        for (topic, partition), offset in next_offsets.items():
            _, high = self.users.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            if high >= 0:
                lag = max(lag, high - offset)
        CONSUMER_LAG.set(lag)

    # --- popular items and models ------------------------------------------------------------

    def _poll_control(self) -> None:
        """Apply popular lists and model announcements that arrived (only the newest of each counts)."""
        assert self.control is not None
        popular: PopularItems | None = None
        announced: ModelAnnouncement | None = None
        categories: dict[str, list[tuple[str, float]]] = {}
        catalog_changed = False
        for message in self.control.consume(500, timeout=0):
            if error := message.error():
                log.warning("Kafka control consumer error", extra={"error": error.str()})
                continue
            topic = message.topic()
            try:
                if topic == self.settings.topic_catalog:
                    self.catalog.apply(CatalogChange.from_json(message.value()), message.offset())
                    catalog_changed = True
                elif topic == self.settings.topic_popular_items:
                    popular = PopularItems.from_json(message.value())
                    categories.update(popular.categories)  # every message's categories count
                else:
                    announced = ModelAnnouncement.from_json(message.value())
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.error("skipping unreadable message", extra={"topic": topic, "error": str(exc)})
        if categories:
            self.popular_lists.update_categories(categories)
        if catalog_changed:
            self.catalog_publisher.write_if_due(owns_partition_0=0 in self.assigned_partitions)
            if self.popular_lists.popular is not None and popular is None:
                self._set_popular(self.popular_lists.popular)  # without the items that became unavailable
            if not categories:
                self.popular_lists.write_categories(self.popular_lists.by_category)
        if popular is not None:
            self._set_popular(popular)
        if announced is not None:
            self._switch_model(announced.version, reason="announcement")

    def _set_popular(self, popular: PopularItems) -> None:
        first = self.popular_lists.set_popular(popular)
        if first and self.model is None:
            # Users seen before any list existed got nothing written: give them their fallback now.
            self._queue_rescore()

    def _check_promoted_periodically(self) -> None:
        now = time.monotonic()
        if now < self._next_promoted_check:
            return
        self._next_promoted_check = now + PROMOTED_CHECK_SECONDS
        promoted = self.registry.promoted_version()
        # React to PROMOTED *changing* (not differing from the served model), so a refused
        # version or an announced one that PROMOTED lags behind does not cause flapping.
        if promoted is not None and promoted != self.promoted_seen:
            self.promoted_seen = promoted
            self._switch_model(promoted, reason="registry PROMOTED changed")

    def _switch_model(self, version: str, reason: str) -> None:
        """Load, verify and warm up ``version``; serve it only if all of that succeeded."""
        current = self.model.version if self.model else None
        if version == current or version in self.refused_versions:
            return
        try:
            model = ServedModel.load(
                self.registry,
                version,
                threads=self.settings.scorer_threads,
                popularity_penalty=self.settings.scorer_popularity_penalty,
            )
            embeddings = load_item_embeddings(self.registry, version, model.manifest.n_items)
        except (ModelIntegrityError, OSError) as exc:
            self.refused_versions.add(version)
            MODELS_REFUSED.inc()
            log.error(
                "model refused, keeping the current one",
                extra={"model_version": version, "serving": current, "reason": reason, "error": str(exc)},
            )
            return
        self.model = model  # the swap: batches are scored between loop steps, never mid-swap
        MODEL_IN_USE.clear()
        MODEL_IN_USE.labels(version).set(1)
        self.writer.set("write the served model version", self.keys.model, version)
        self._queue_rescore()
        self._start_similar(model, embeddings)
        log.info(
            "serving model",
            extra={
                "model_version": version,
                "previous": current,
                "reason": reason,
                "users_to_rescore": len(self.rescore_queue),
            },
        )

    # --- re-scoring remembered users ---------------------------------------------------------

    def _queue_rescore(self) -> None:
        """Re-score every remembered user, most recent first, in chunks between real-time batches."""
        self.rescore_queue = OrderedDict.fromkeys(self.recent.most_recent_first(), False)  # all predate it
        self._rescore_started = time.monotonic()

    def _seconds_until_rescore(self) -> float:
        """How long until the next re-scoring chunk is allowed (infinite with nothing queued)."""
        if not self.rescore_queue:
            return math.inf
        return max(0.0, self._next_rescore_at - time.monotonic())

    def _rescore_step(self) -> None:
        """Re-score one chunk (at most scorer_batch_size) of remembered users with what is served now,
        at most ``scorer_rescore_per_second`` users per second (real-time batches go first)."""
        if self._seconds_until_rescore() > 0:
            return
        histories: dict[str, list[str]] = {}
        check: list[str] = []  # of those, the users to re-score only if Redis holds an older list
        while self.rescore_queue and len(histories) < self.settings.scorer_batch_size:
            user, check_first = self.rescore_queue.popitem(last=False)
            remembered = self.recent.get(user)
            # A user whose partition moved to another scorer is that scorer's to write now.
            if remembered is not None and remembered.partition in self.assigned_partitions:
                histories[user] = remembered.history
                if check_first:
                    check.append(user)
        for user in self._current_already(check):
            del histories[user]
        self._write_lists(self._score(histories), trigger="rescore")
        self.counts["rescored"] += len(histories)
        RESCORE_QUEUE.set(len(self.rescore_queue))
        if rate := self.settings.scorer_rescore_per_second:
            self._next_rescore_at = time.monotonic() + len(histories) / rate
        if not self.rescore_queue:
            log.info(
                "re-scoring of remembered users done",
                extra={
                    "model_version": self.model.version if self.model else None,
                    "seconds": round(time.monotonic() - self._rescore_started, 2),
                },
            )

    def _current_already(self, check: list[str]) -> list[str]:
        """The users among ``check`` whose list in Redis is from the served model."""
        if not check or self.model is None:
            return []
        keys = [self.keys.recs(user) for user in check]
        values = self.writer.get_many("read recalled users' lists", keys)
        version = self.model.version
        current = []
        for user, raw in zip(check, values, strict=True):
            try:
                if raw is not None and CachedList.decode(raw).model_version == version:
                    current.append(user)
            except CachedListDecodeError:
                pass  # unreadable: re-score it
        return current

    # --- similar items -----------------------------------------------------------------------

    def _start_similar(self, model: ServedModel, embeddings: np.ndarray | None) -> None:
        """Prepare the new model's similar lists (written by :meth:`_similar_step`), unless it has no
        embeddings or another scorer already wrote them all."""
        self.cooccurrence.forget_known(model.index_of.__contains__)
        self.similar_writer = None
        if embeddings is None:
            log.info(
                "model has no item embeddings: similar items from co-occurrence only",
                extra={"model_version": model.version},
            )
            return
        done = self.writer.get("read the similar lists' version", self.keys.similar_model)
        if done is not None and done.decode() == model.version:
            return
        self.similar_writer = SimilarListWriter(
            model.version,
            model.vocabulary,
            embeddings,
            self.settings.top_n,
            model.list_encoder.encode,
        )

    def _similar_due(self) -> bool:
        # One scorer computes the lists: the owner of partition 0 (a rebalance hands the rest over).
        writer = self.similar_writer
        return writer is not None and not writer.done and 0 in self.assigned_partitions

    def _seconds_until_similar(self) -> float:
        """0 while similar lists are waiting to be written by this scorer, else infinite."""
        return 0.0 if self._similar_due() else math.inf

    def _similar_step(self) -> None:
        """Write one chunk of the served model's similar lists; unknown items' lists periodically."""
        now = time.monotonic()
        if now >= self._next_fallback_write:
            self._next_fallback_write = now + FALLBACK_WRITE_SECONDS
            fallback = self.cooccurrence.lists(self.settings.top_n, time.time())
            self._write_similar({item: cached.encode() for item, cached in fallback.items()})
        if not self._similar_due():
            return
        writer = self.similar_writer
        assert writer is not None
        self._write_similar(writer.step(time.time()))
        if writer.done:
            self.writer.set("write the similar lists' version", self.keys.similar_model, writer.version)
            log.info(
                "similar items written",
                extra={
                    "model_version": writer.version,
                    "items": len(writer.vocabulary),
                    "seconds": round(time.monotonic() - writer.started, 2),
                },
            )

    def _write_similar(self, values: dict[str, bytes]) -> None:
        """SET the items' similar lists in one pipeline (no TTL: overwritten in place)."""
        keyed: dict[str, bytes | str] = {self.keys.similar(item): value for item, value in values.items()}
        self.writer.set_many(f"write {len(values)} similar-item lists", keyed)

    def _observe_cooccurrence(self, histories: Iterable[list[str]]) -> None:
        """Count the neighbours of items the served model does not know (their fallback lists)."""
        model = self.model
        known = model.index_of.__contains__ if model is not None else (lambda _item: False)
        for history in histories:
            self.cooccurrence.observe(history, known)

    # --- kept for tests/integration/test_redis_topologies.py, which drives the writer through here

    @property
    def redis(self) -> SyncRedis:
        """The Redis client."""
        return self.writer.client

    @property
    def redis_ok(self) -> bool:
        """False while a Redis operation is being retried."""
        return self.writer.ok

    def _retry(self, what: str, action: Callable[[], T]) -> T:
        return self.writer.retry(what, action)

    def _log_progress(self) -> None:
        now = time.monotonic()
        if now >= self._next_progress_log:
            self._next_progress_log = now + PROGRESS_LOG_SECONDS
            log.info(
                "scorer progress",
                extra={
                    **self.counts,
                    "recent_users": len(self.recent),
                    "model_version": self.model.version if self.model else None,
                },
            )


def run(settings: Settings) -> None:
    """Run the scorer until SIGINT/SIGTERM, then finish the batch in hand, commit and close."""
    service = ScorerService(settings)  # raises ConfigError if Kafka or Redis is not configured

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        service.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    start_ops_server(settings, alive=lambda: None, ready=service.readiness)
    try:
        service.start()
        # Only once up: a failed start exits with one clear line, not a pause logged after it.
        freeze_startup_objects()
        watch_gc_pauses()
        service.run()
    except Stopped:
        log.warning("stopped before the scorer could start (Redis unreachable)")
    finally:
        service.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
