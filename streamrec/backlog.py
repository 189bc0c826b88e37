"""How far ingest is behind its input, in events, read off Kafka: its group's committed offsets
against the ends of the topics it reads.

Used by ``streamrec train --once`` (wait until ingest has taken every event published before the
command started) and by ``streamrec status``. Ingest commits an offset only once the states of the
events before it are in its changelog and their features are sent, so "committed" means "done".
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from tqdm import tqdm

from streamrec.shared.kafka_config import client_config
from streamrec.shared.kafka_topics import INGEST_GROUP, INGEST_REKEYED_TOPIC
from streamrec.shared.settings import Settings

END_READ_SECONDS = 10.0  # longest the reads of the partitions' last record batches may take
POLL_SECONDS = 0.5
SUM_SECONDS = 30.0
COORDINATOR_WAIT_SECONDS = 30.0  # longest a group's offsets may be unreadable while its coordinator loads
COORDINATOR_NOT_READY = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
    }
)  # longest a count of what a group is behind may read


class IngestStalled(RuntimeError):
    """Ingest made no progress on a backlog for too long: it is not running, or stuck."""


class Offsets:
    """Log ends of topics and a consumer group's committed offsets (the group is never joined)."""

    def __init__(self, settings: Settings, group: str = INGEST_GROUP) -> None:
        config = {"enable.auto.commit": False, "log_level": 3}
        self._reader = Consumer(
            client_config(settings, {**config, "group.id": f"streamrec-cli-{uuid.uuid4().hex}"})
        )
        self._group = Consumer(client_config(settings, {**config, "group.id": group}))

    def partitions(self, topic: str) -> list[int]:
        """The topic's partitions ([] if it does not exist)."""
        metadata = self._reader.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return []
        return sorted(metadata.partitions)

    def ends(self, topic: str) -> dict[int, int]:
        """Each partition's log end: the offset the next record will get.

        Tansu reports the last record batch's base offset + 1 as the high watermark, not the end;
        that batch is read to find its last offset. (On Apache Kafka the read finds nothing more.)
        """
        ends: dict[int, int] = {}
        last_batches: list[TopicPartition] = []
        for partition in self.partitions(topic):
            low, high = self._reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            ends[partition] = high
            if high > low:
                last_batches.append(TopicPartition(topic, partition, high - 1))
        if last_batches:
            waiting = {tp.partition: tp.offset for tp in last_batches}  # the last listed record

            def take(messages: list[Any]) -> None:
                for message in messages:
                    if message.error() is None:
                        partition = message.partition()
                        ends[partition] = max(ends[partition], message.offset() + 1)
                        if partition in waiting and message.offset() >= waiting[partition]:
                            del waiting[partition]

            self._reader.assign(last_batches)
            try:
                deadline = time.monotonic() + END_READ_SECONDS
                while waiting and (left := deadline - time.monotonic()) > 0:
                    take(self._reader.consume(100_000, min(POLL_SECONDS, left)))
                # The rest of each last batch came in the same fetch response: it is queued already.
                take(self._reader.consume(100_000, 0))
            finally:
                self._reader.unassign()
        return ends

    def committed(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """The group's committed offset per partition (0 where it never committed).

        A broker whose group coordinator is still loading its offsets (Apache Kafka after a start,
        or after the coordinator moved) answers with a retriable error: asked again until it
        answers, for up to ``COORDINATOR_WAIT_SECONDS``.
        """
        wanted = [TopicPartition(topic, p) for p in partitions]
        deadline = time.monotonic() + COORDINATOR_WAIT_SECONDS
        while True:
            try:
                offsets = self._group.committed(wanted, timeout=10)
                return {tp.partition: max(0, tp.offset) for tp in offsets}
            except KafkaException as exc:
                error = exc.args[0]
                loading = error.retriable() or error.code() in COORDINATOR_NOT_READY
                if not loading or time.monotonic() > deadline:
                    raise
                time.sleep(POLL_SECONDS)

    def behind(self, topic: str, ends: dict[int, int]) -> int:
        """Records of ``ends`` the group has not committed yet."""
        committed = self.committed(topic, ends)
        return sum(max(0, end - committed[partition]) for partition, end in ends.items())

    def sum_between(
        self, topic: str, starts: dict[int, int], ends: dict[int, int], weight: Callable[[bytes], int]
    ) -> int:
        """Sum of ``weight(value)`` over the records from ``starts`` to ``ends`` (exclusive) per partition."""
        todo = {p: end for p, end in ends.items() if end > starts.get(p, 0)}
        if not todo:
            return 0
        self._reader.assign([TopicPartition(topic, p, starts.get(p, 0)) for p in todo])
        total, deadline = 0, time.monotonic() + SUM_SECONDS
        try:
            while todo:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{topic}: more than {SUM_SECONDS:.0f} s to read what is behind")
                for message in self._reader.consume(10_000, POLL_SECONDS):
                    partition = message.partition()
                    if (
                        message.error() is not None
                        or partition not in todo
                        or message.offset() >= todo[partition]
                    ):
                        continue
                    total += weight(message.value() or b"")
                    if message.offset() + 1 >= todo[partition]:
                        del todo[partition]
        finally:
            self._reader.unassign()
        return total

    def close(self) -> None:
        """Release both consumers."""
        self._reader.close()
        self._group.close()


def ingest_behind(offsets: Offsets, settings: Settings) -> int:
    """Events ingest has not taken yet: of its input, and of its re-key topic."""
    return sum(
        offsets.behind(topic, offsets.ends(topic))
        for topic in (settings.topic_interactions, INGEST_REKEYED_TOPIC)
    )


def wait_for_ingest(
    settings: Settings,
    stall_seconds: float = 60.0,
    progress: bool = True,
    tick: Callable[[], object] | None = None,
) -> int:
    """Wait until ingest has taken every event of its input as it stands now; returns their number.

    Then the same for the events it re-keyed meanwhile (one more hop). Shows a progress bar in
    events, and calls ``tick`` (e.g. a supervisor) between polls. Raises :class:`IngestStalled`
    when ingest commits nothing for ``stall_seconds``.
    """
    offsets = Offsets(settings)
    waited = 0
    try:
        for topic in (settings.topic_interactions, INGEST_REKEYED_TOPIC):
            ends = offsets.ends(topic)
            behind = offsets.behind(topic, ends)
            if behind == 0:
                continue
            waited += behind
            with tqdm(total=behind, unit="ev", desc="waiting for ingest", disable=not progress) as bar:
                moved_at = time.monotonic()
                while (now_behind := offsets.behind(topic, ends)) > 0:
                    if now_behind < behind:
                        bar.update(behind - now_behind)
                        behind, moved_at = now_behind, time.monotonic()
                    elif time.monotonic() - moved_at > stall_seconds:
                        raise IngestStalled(
                            f"ingest took none of the {now_behind:,} events it is behind on {topic} for "
                            f"{stall_seconds:.0f} s: is it running? (--no-wait trains on what it has done)"
                        )
                    if tick is not None:
                        tick()
                    time.sleep(POLL_SECONDS)
                bar.update(behind)
    except KafkaException as exc:
        raise IngestStalled(f"cannot read ingest's progress from Kafka: {exc.args[0].str()}") from None
    finally:
        offsets.close()
    return waited
