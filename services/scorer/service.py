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

Similar items (services/scorer/similar_items.py, similar_lists.py): after a swap, the scorer that owns partition 0 of
the user features writes every item's nearest items in the new model's embeddings, in chunks
between real-time batches (one scorer computes them; the others skip the work). Every scorer
counts co-occurrences of the items the model does not know in its users' histories and writes their
fallback lists periodically.

This module is the loop and its wiring. Where each job lives:

- ``intake.py``: the group consumer of the user features, micro-batches, decoding;
- ``offsets.py``: the partitions owned and the commit rule (an offset is committed only after
  Redis holds its batch's lists), as numbered steps;
- ``user_batches.py``: the real-time path, a micro-batch to lists in Redis;
- ``scoring.py``: histories and the model in, lists out (no I/O);
- ``redis_writer.py``: every Redis operation, with one retry policy; ``user_lists.py``,
  ``popular_lists.py`` and ``catalog_replica.py`` hold what is written where;
- ``control.py``: the popular items, model announcements and catalog changes;
- ``model_switch.py``: which version to serve, loaded and verified, handed to the loop;
- ``rescoring.py`` (with ``recent_users.py``): re-scoring remembered and recalled users;
- ``similar_lists.py`` (with ``similar_items.py``): similar items;
- ``metrics.py``: the Prometheus metrics and the progress counts.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streamrec.scorer.catalog_replica import CatalogPublisher, CatalogReplica
from streamrec.scorer.control import ControlTopics, ControlUpdates
from streamrec.scorer.intake import UserFeaturesIntake, tail_consumer
from streamrec.scorer.metrics import MODEL_IN_USE, SCORING_SECONDS, ScorerCounts
from streamrec.scorer.model_runtime import ServedModel
from streamrec.scorer.model_switch import ModelSwap, ModelSwitcher
from streamrec.scorer.offsets import PartitionOffsets
from streamrec.scorer.popular_lists import PopularLists
from streamrec.scorer.recent_users import PartitionTail, RecentUsers
from streamrec.scorer.redis_writer import RedisWriter, Stopped
from streamrec.scorer.rescoring import Rescoring
from streamrec.scorer.scoring import ListScorer, ScoredLists
from streamrec.scorer.similar_lists import SimilarLists
from streamrec.scorer.user_batches import UserBatches
from streamrec.scorer.user_lists import UserLists
from streamrec.shared.gc_pauses import freeze_startup_objects, watch_gc_pauses
from streamrec.shared.kafka_topics import SCORER_GROUP
from streamrec.shared.logs import get_logger
from streamrec.shared.messages import PopularItems
from streamrec.shared.ops import start_ops_server
from streamrec.shared.redis_connection import connect
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.registry import ModelRegistry
from streamrec.shared.settings import ConfigError, Settings
from streamrec.shared.topic_admin import existing_topics

log = get_logger(__name__)

IDLE_POLL_SECONDS = (
    0.25  # longest block waiting for traffic; bounds the reaction time to control messages (a hidden item)
)
PROGRESS_LOG_SECONDS = 60.0


class ScorerService:
    """The scorer loop and the objects it drives: intake, offsets, scoring, Redis, control topics,
    model switches, re-scoring and similar items. The served model is the loop's (``model``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bootstrap, redis_url = settings.require_servers()
        self.keys = RedisKeys(settings.redis_prefix)
        self.stopping = threading.Event()
        client = connect(settings, url=redis_url, socket_timeout=10.0, connect_timeout=5.0)
        self.writer = RedisWriter(client, redis_url, self.stopping)
        self.counts = ScorerCounts()

        self.model: ServedModel | None = None
        self.catalog = CatalogReplica()
        self.catalog_publisher = CatalogPublisher(self.catalog, self.writer, self.keys)
        self.popular_lists = PopularLists(
            self.writer, self.keys, self.catalog, settings.top_n, settings.recs_format
        )
        self.scorer = ListScorer(self.catalog, settings.top_n, settings.recs_format)
        self.user_lists = UserLists(self.writer, self.keys, settings.recs_ttl_seconds or None, self.counts)
        self.switcher = ModelSwitcher(
            ModelRegistry(settings.model_dir),  # type: ignore[arg-type]  # set by Settings
            threads=settings.scorer_threads,
            popularity_penalty=settings.scorer_popularity_penalty,
        )
        self.offsets = PartitionOffsets()
        self.intake = UserFeaturesIntake(settings)
        self.control = ControlTopics(settings, self.catalog)
        self.rescoring = Rescoring(
            RecentUsers(settings.scorer_recent_users),
            self.user_lists,
            self._score,
            self.counts,
            batch_size=settings.scorer_batch_size,
            per_second=settings.scorer_rescore_per_second,
            partitions=settings.partitions,
        )
        self.similar = SimilarLists(self.writer, self.keys, settings.top_n)
        self.user_batches = UserBatches(
            self.intake,
            self.offsets,
            self.rescoring,
            self.similar,
            self.user_lists,
            self._score,
            self.counts,
            chunk=settings.scorer_batch_size,
        )
        self._next_progress_log = time.monotonic() + PROGRESS_LOG_SECONDS

    # --- lifecycle ---------------------------------------------------------------------------

    def readiness(self) -> str | None:
        """None when serving; otherwise why not (for /readyz)."""
        if self.intake.consumer is None:
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
        if swap := self.switcher.at_startup():
            self._serve(swap)
        self.control.connect()
        self.rescoring.tail = PartitionTail(tail_consumer(self.settings), self.settings.topic_user_features)
        self.offsets.consumer = self.intake.subscribe(
            on_assign=self._on_assign, on_revoke=self._on_revoke, on_commit=PartitionOffsets.on_commit
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
        assert self.intake.consumer is not None, "start() first"
        while not self.stopping.is_set():
            try:
                self._apply_control(self.control.poll())
                if swap := self.switcher.promoted_changed(self._served_version()):
                    self._serve(swap)
                # With re-scoring due, do not block waiting for traffic: alternate the two.
                idle = min(
                    IDLE_POLL_SECONDS,
                    self.rescoring.seconds_until_due(),
                    self.similar.seconds_until_due(self.offsets.assigned),
                )
                batch = self.intake.collect(idle)
                if batch:
                    self.user_batches.process(batch, self.model)
                self.offsets.commit_if_due()
                self.rescoring.step(self.model, self.offsets.assigned)
                self.similar.step(self.offsets.assigned)
                self.catalog_publisher.write_if_due(owns_partition_0=0 in self.offsets.assigned)
            except Stopped:
                log.warning("stopping with Redis unreachable: the uncommitted batch will be re-delivered")
                break
            self._log_progress()
        self.offsets.commit_all()  # the batches written so far (the one Redis refused is not among them)

    def close(self) -> None:
        """Leave the consumer group and close every connection (idempotent)."""
        started = self.intake.consumer is not None
        tail = self.rescoring.tail
        for consumer in (self.intake.consumer, self.control.consumer, tail.consumer if tail else None):
            if consumer is not None:
                try:
                    consumer.close()
                except (KafkaException, RuntimeError) as exc:
                    log.warning("closing a Kafka consumer failed", extra={"error": str(exc)})
        self.intake.consumer = self.control.consumer = self.offsets.consumer = self.rescoring.tail = None
        self.writer.close()
        if started:
            log.info("scorer stopped", extra=self.counts.as_log_fields())

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

    # --- consumer-group callbacks ------------------------------------------------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gained = self.offsets.assign({tp.partition for tp in partitions})
        self.rescoring.recall(gained, self.offsets.scored_last, model_served=self.model is not None)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.offsets.revoke({tp.partition for tp in partitions})

    # --- what is served ----------------------------------------------------------------------

    def _served_version(self) -> str | None:
        return self.model.version if self.model else None

    def _score(self, histories: dict[str, list[str]]) -> ScoredLists:
        """The users' lists with the served model and popular list (timed and counted)."""
        with SCORING_SECONDS.time():
            scored = self.scorer.score(histories, self.model, self.popular_lists.popular, time.time())
        self.counts.personal += scored.personal
        self.counts.fallback += scored.fallback
        return scored

    def _apply_control(self, updates: ControlUpdates) -> None:
        """Apply popular lists, catalog changes and model announcements that arrived."""
        if updates.categories:
            self.popular_lists.update_categories(updates.categories)
        if updates.catalog_changed:
            self.catalog_publisher.write_if_due(owns_partition_0=0 in self.offsets.assigned)
            if self.popular_lists.popular is not None and updates.popular is None:
                self._set_popular(self.popular_lists.popular)  # without the items that became unavailable
            if not updates.categories:
                self.popular_lists.write_categories(self.popular_lists.by_category)
        if updates.popular is not None:
            self._set_popular(updates.popular)
        if updates.announced is not None:
            swap = self.switcher.load(
                updates.announced.version, self._served_version(), reason="announcement"
            )
            if swap:
                self._serve(swap)

    def _set_popular(self, popular: PopularItems) -> None:
        first = self.popular_lists.set_popular(popular)
        if first and self.model is None:
            # Users seen before any list existed got nothing written: give them their fallback now.
            self.rescoring.queue_all()

    def _serve(self, swap: ModelSwap) -> None:
        """Serve the model ``swap`` loaded: re-score the remembered users, write its similar items."""
        version = swap.model.version
        self.model = swap.model  # the swap: batches are scored between loop steps, never mid-swap
        MODEL_IN_USE.clear()
        MODEL_IN_USE.labels(version).set(1)
        self.writer.set("write the served model version", self.keys.model, version)
        self.rescoring.queue_all()
        self.similar.start(swap.model, swap.embeddings)
        log.info(
            "serving model",
            extra={
                "model_version": version,
                "previous": swap.previous,
                "reason": swap.reason,
                "users_to_rescore": len(self.rescoring.queue),
            },
        )

    def _log_progress(self) -> None:
        now = time.monotonic()
        if now >= self._next_progress_log:
            self._next_progress_log = now + PROGRESS_LOG_SECONDS
            log.info(
                "scorer progress",
                extra={
                    **self.counts.as_log_fields(),
                    "recent_users": len(self.rescoring.recent),
                    "model_version": self._served_version(),
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
