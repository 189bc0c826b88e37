"""Re-scoring remembered users: after a model swap (or the first popular list before any model)
the recently seen users are re-scored in bounded chunks between real-time batches, and the users
of a partition gained are recalled from its tail (:mod:`streamrec.scorer.recent_users`)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from confluent_kafka import KafkaException

from streamrec.scorer.metrics import RESCORE_QUEUE, ScorerCounts
from streamrec.scorer.model_runtime import ServedModel
from streamrec.scorer.recent_users import PartitionTail, RecentUsers
from streamrec.scorer.scoring import ScoredLists
from streamrec.scorer.user_lists import UserLists
from streamrec.shared.logs import get_logger

log = get_logger(__name__)

# At most this many user-features messages are read back per partition gained (a message holds the
# users of one ingest run: a dozen in a live stream, thousands in a backlog), within 10 s.
RECALL_MESSAGES = 5000


class Rescoring:
    """The recently seen users and the queue of those to re-score with what is served now."""

    def __init__(
        self,
        recent: RecentUsers,
        lists: UserLists,
        score: Callable[[dict[str, list[str]]], ScoredLists],
        counts: ScorerCounts,
        batch_size: int,
        per_second: int,
        partitions: int,
    ) -> None:
        self.recent = recent
        self.lists = lists
        self.score = score  # with the served model and popular list
        self.counts = counts
        self.batch_size = batch_size  # users per chunk, at most
        self.per_second = per_second  # users re-scored per second, at most (0: no limit)
        self.partitions = partitions  # of the user features, to share the memory among them
        self.tail: PartitionTail | None = None  # reads a gained partition's recent users, once connected
        # User -> whether to check Redis first: users read back from Kafka on assignment are
        # re-scored only if their list is not from the served model (the partition's previous owner
        # may have re-scored them already).
        self.queue: OrderedDict[str, bool] = OrderedDict()
        self.started = 0.0  # monotonic, when the queue was filled
        self.next_at = 0.0  # monotonic, when the next chunk may run

    def seen(self, user_id: str, history: list[str], partition: int) -> None:
        """Remember a user scored by the real-time path: with the current model, so not queued."""
        self.recent.remember(user_id, history, partition)
        self.queue.pop(user_id, None)

    def forget(self, user_id: str) -> None:
        """Drop an erased user: never re-scored again."""
        self.recent.forget(user_id)
        self.queue.pop(user_id, None)

    def queue_all(self) -> None:
        """Re-score every remembered user, most recent first, in chunks between real-time batches."""
        self.queue = OrderedDict.fromkeys(self.recent.most_recent_first(), False)  # all predate it
        self.started = time.monotonic()

    def seconds_until_due(self) -> float:
        """How long until the next re-scoring chunk is allowed (infinite with nothing queued)."""
        if not self.queue:
            return math.inf
        return max(0.0, self.next_at - time.monotonic())

    def step(self, model: ServedModel | None, assigned: set[int]) -> None:
        """Re-score one chunk (at most batch_size) of remembered users with what is served now, at
        most ``per_second`` users per second (real-time batches go first)."""
        if self.seconds_until_due() > 0:
            return
        histories: dict[str, list[str]] = {}
        check: list[str] = []  # of those, the users to re-score only if Redis holds an older list
        while self.queue and len(histories) < self.batch_size:
            user, check_first = self.queue.popitem(last=False)
            remembered = self.recent.get(user)
            # A user whose partition moved to another scorer is that scorer's to write now.
            if remembered is not None and remembered.partition in assigned:
                histories[user] = remembered.history
                if check_first:
                    check.append(user)
        if check and model is not None:
            for user in self.lists.from_model(check, model.version):
                del histories[user]
        self.lists.write(self.score(histories), trigger="rescore")
        self.counts.rescored += len(histories)
        RESCORE_QUEUE.set(len(self.queue))
        if self.per_second:
            self.next_at = time.monotonic() + len(histories) / self.per_second
        if not self.queue:
            log.info(
                "re-scoring of remembered users done",
                extra={
                    "model_version": model.version if model else None,
                    "seconds": round(time.monotonic() - self.started, 2),
                },
            )

    def recall(self, gained: list[int], scored_last: Callable[[int, int], bool], model_served: bool) -> None:
        """Remember the recent users of the partitions gained, before any of their messages is
        scored (what the real-time path sees next is newer); queue them if a model is served."""
        if not gained or self.tail is None or self.recent.capacity == 0:
            return
        try:
            committed = self.tail.committed(gained)
        except KafkaException as exc:
            log.warning("cannot read the committed offsets to recall users", extra={"error": str(exc)})
            return
        for partition in gained:
            offset = committed.get(partition, -1)
            if scored_last(partition, offset):
                continue  # this scorer scored the partition last: what it remembers is current
            self._recall_partition(partition, offset, model_served)

    def _recall_partition(self, partition: int, committed: int, model_served: bool) -> None:
        """Remember the users the partition's previous owner scored last, up to the group's
        ``committed`` offset, and queue them for re-scoring if a model is served (their lists may
        be from an older one)."""
        assert self.tail is not None
        started = time.monotonic()
        self.recent.forget_partition(partition)
        share = max(1, self.recent.capacity // max(1, self.partitions))
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
        if model_served:
            if recalled and not self.queue:
                self.started = time.monotonic()
            for user in recalled:
                self.queue.setdefault(user, True)
        log.info(
            "recent users of a partition recalled",
            extra={
                "partition": partition,
                "users": len(recalled),
                "seconds": round(time.monotonic() - started, 2),
            },
        )
