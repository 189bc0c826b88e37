"""The user-features offsets a scorer owes and commits: the rule that makes it at-least-once.

An offset is committed only once Redis holds the lists of the batch it ends. Every step of a
batch, a revoke and a stop goes through :class:`PartitionOffsets`, so the order is in one place.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import KafkaException, TopicPartition

from streamrec.shared.logs import get_logger

log = get_logger(__name__)

COMMIT_SECONDS = 1.0  # offsets of written batches are committed at most this often (and on revoke, stop)


class OffsetCommitter(Protocol):
    """What :class:`PartitionOffsets` needs of the group consumer."""

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> object:
        """Commit ``offsets``; without waiting for the broker if ``asynchronous``."""
        ...


class PartitionOffsets:
    """The scorer's partitions of the user features, and their offsets owed and committed.

    The commit order:

    1. A batch's lists are written to Redis (and its erased users' lists deleted).
    2. Only once that returned are the batch's next offsets owed (:meth:`write_then_owe`); a write
       that raised (Redis refused, or :class:`~streamrec.scorer.redis_writer.Stopped`) owes nothing,
       so the batch is re-delivered and re-scored.
    3. What is owed is committed about once a second without waiting for the broker
       (:meth:`commit_if_due`: a replicated commit took 10-330 ms on three brokers, a stall of every
       list behind it); a failure is logged by :meth:`on_commit`.
    4. On revoke, the revoked partitions' owed offsets are committed, waiting, before the partitions
       go (:meth:`revoke`): the next owner starts from there.
    5. On stop, everything owed is committed, waiting (:meth:`commit_all`).
    """

    def __init__(self, commit_seconds: float = COMMIT_SECONDS) -> None:
        self.consumer: OffsetCommitter | None = None  # the group consumer, once connected
        self.commit_seconds = commit_seconds
        self.assigned: set[int] = set()  # partitions this scorer owns now
        # Offsets of batches already in Redis, committed together about once a second: a commit per
        # micro-batch was a broker round trip each, on the path of the next batch.
        self.owed: dict[tuple[str, int], int] = {}
        self.scored_to: dict[int, int] = {}  # partition -> next offset after the last batch written
        self.committed_at = time.monotonic()

    def write_then_owe(self, write: Callable[[], None], next_offsets: dict[tuple[str, int], int]) -> None:
        """Steps 1 and 2: run ``write`` (the batch's Redis writes), then owe the batch's next offsets."""
        write()
        self.owed.update(next_offsets)
        self.scored_to.update({partition: offset for (_topic, partition), offset in next_offsets.items()})

    def commit_if_due(self) -> None:
        """Step 3: commit what is owed, without waiting, if the last commit is COMMIT_SECONDS old
        (also when traffic stopped: the last batches get committed)."""
        if self.owed and time.monotonic() - self.committed_at >= self.commit_seconds:
            self._commit(wait=False)

    def revoke(self, partitions: set[int]) -> None:
        """Step 4: commit the revoked partitions' owed offsets, waiting; then they are not ours."""
        # Every batch is written before the next poll; what is owed is only its commit.
        self._commit(partitions)
        self.assigned -= partitions
        log.info("partitions revoked", extra={"revoked": sorted(partitions)})

    def commit_all(self) -> None:
        """Step 5 (stop): commit everything owed, waiting (the batch Redis refused is not owed)."""
        self._commit()

    def assign(self, partitions: set[int]) -> list[int]:
        """Take the partitions the group assigned; the ones gained (not owned before), sorted."""
        gained = sorted(partitions - self.assigned)
        self.assigned |= set(gained)
        log.info("partitions assigned", extra={"partitions": sorted(self.assigned)})
        return gained

    def scored_last(self, partition: int, committed: int) -> bool:
        """Whether this scorer wrote the batch ending at the group's ``committed`` offset of
        ``partition`` (so no other scorer had the partition since)."""
        return committed == self.scored_to.get(partition)

    def _commit(self, partitions: set[int] | None = None, wait: bool = True) -> None:
        """Commit the owed offsets (of ``partitions`` only, if given); see the steps above."""
        assert self.consumer is not None, "connect the group consumer first"
        owed = {
            key: offset for key, offset in self.owed.items() if partitions is None or key[1] in partitions
        }
        for key in owed:
            del self.owed[key]
        self.committed_at = time.monotonic()
        if not owed:
            return
        offsets = [TopicPartition(topic, part, offset) for (topic, part), offset in owed.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=not wait)
        except KafkaException as exc:
            self.on_commit(exc.args[0] if exc.args else exc, offsets)

    @staticmethod
    def on_commit(error: object, _offsets: list[TopicPartition]) -> None:
        """The outcome of a commit (a consumer callback for those not waited for)."""
        if error is not None:
            # E.g. the partition moved to another scorer meanwhile: it re-delivers and re-scores.
            log.warning("offset commit failed; the batches will be re-scored", extra={"error": str(error)})
