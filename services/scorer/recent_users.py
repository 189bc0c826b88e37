"""The users a scorer re-scores when a new model arrives, and how it learns them.

A scorer remembers the latest history of the users it scored (:class:`RecentUsers`, a bounded
LRU). A scorer that gains a partition (it started, or the group moved the partition from another
scorer) remembers none of that partition's users yet: a model swapped in afterwards would re-score
only users who acted since, and every other user of the partition would keep a list from the old
model (or the popular fallback) until they act again. So on assignment the scorer reads the tail of
the partition, the messages just before the group's committed offset, which the previous owner
already scored (:class:`PartitionTail`), and remembers those users as older than any it saw itself.
A partition that comes back to the scorer after another scorer had it is read again the same way:
what the scorer remembered of it is stale.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from streamrec.shared.logs import get_logger
from streamrec.shared.messages import FeatureBatchDecodeError, decode_feature_batch

log = get_logger(__name__)

HISTORY_SEPARATOR = "\x00"


@dataclass(slots=True)
class RecentUser:
    """What the scorer remembers of a user to re-score them when a new model arrives."""

    # The history as one string, its items joined by NUL (which no id may hold: ingest refuses
    # it). A list holds a string object per item, about 60 bytes each; and orjson's output would
    # keep its 4 KiB buffer allocated, whatever its length.
    joined_history: str
    partition: int  # of topic_user_features: only the scorer owning it should write the user

    @property
    def history(self) -> list[str]:
        """The user's latest history, oldest item first."""
        return self.joined_history.split(HISTORY_SEPARATOR) if self.joined_history else []


class RecentUsers:
    """The latest history of recently seen users, least recently seen evicted first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._users: OrderedDict[str, RecentUser] = OrderedDict()

    def remember(self, user_id: str, history: list[str], partition: int) -> None:
        """Store (or refresh) a user's latest history."""
        if self.capacity == 0:
            return
        self._users[user_id] = RecentUser(HISTORY_SEPARATOR.join(history), partition)
        self._users.move_to_end(user_id)
        if len(self._users) > self.capacity:
            self._users.popitem(last=False)

    def remember_older(self, user_id: str, history: list[str], partition: int) -> bool:
        """Store a user seen before every remembered one (read back from Kafka), unless the user is
        remembered already (what was seen since is newer) or there is no room (older users are the
        first to go). True if stored."""
        if user_id in self._users or len(self._users) >= self.capacity:
            return False
        self._users[user_id] = RecentUser(HISTORY_SEPARATOR.join(history), partition)
        self._users.move_to_end(user_id, last=False)
        return True

    def get(self, user_id: str) -> RecentUser | None:
        """The remembered user, or None if never seen or evicted."""
        return self._users.get(user_id)

    def forget(self, user_id: str) -> None:
        """Drop an erased user (``streamrec users forget``): never re-scored again."""
        self._users.pop(user_id, None)

    def forget_partition(self, partition: int) -> None:
        """Drop the users of ``partition``: another scorer saw what they did since."""
        for user_id in [user for user, seen in self._users.items() if seen.partition == partition]:
            del self._users[user_id]

    def most_recent_first(self) -> list[str]:
        """User ids, most recently seen first."""
        return list(reversed(self._users))

    def __len__(self) -> int:
        return len(self._users)


class PartitionTail:
    """Reads the users a scorer group already scored on one partition of the user features.

    ``consumer`` is the scorer group's id on a consumer that never subscribes: it reads the group's
    committed offsets and assigns partitions by hand, so it never joins the group.
    """

    def __init__(self, consumer: Consumer, topic: str, timeout_s: float = 10.0) -> None:
        self.consumer = consumer
        self.topic = topic
        self.timeout_s = timeout_s

    def committed(self, partitions: list[int]) -> dict[int, int]:
        """The group's committed offset of each of ``partitions`` (-1 if none), in one request;
        raises KafkaException."""
        asked = [TopicPartition(self.topic, partition) for partition in partitions]
        return {
            tp.partition: max(tp.offset, -1) for tp in self.consumer.committed(asked, timeout=self.timeout_s)
        }

    def latest_histories(
        self, partition: int, end: int, messages: int, users: int
    ) -> OrderedDict[str, list[str]]:
        """The latest history of (at most) the ``users`` most recently seen users in (at most) the
        last ``messages`` messages before offset ``end`` of ``partition``, least recently seen
        first. Users erased there are left out. What Kafka does not give within the timeout is
        missed (those users are re-scored only once they act again), never wrong."""
        histories: OrderedDict[str, list[str]] = OrderedDict()
        deadline = time.monotonic() + self.timeout_s
        try:
            low, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=self.timeout_s
            )
            end = min(end, high)
            start = max(low, end - messages)
            if start >= end:
                return histories
            self.consumer.assign([TopicPartition(self.topic, partition, start)])
            position = start
            while time.monotonic() < deadline:
                # No more than what is left: consume() waits its whole timeout for a fuller batch.
                batch = self.consumer.consume(min(1000, end - position), timeout=1.0)
                if not batch:  # the rest was compacted or deleted away: nothing more to read
                    break
                position = batch[-1].offset() + 1
                if self._fold(batch, end, histories, users):
                    break
            else:
                log.warning(
                    "stopped reading a partition's recent users at the timeout",
                    extra={"partition": partition, "users": len(histories), "timeout_s": self.timeout_s},
                )
        except KafkaException as exc:
            log.warning(
                "could not read a partition's recent users; they are re-scored only once they act",
                extra={"partition": partition, "error": str(exc)},
            )
        finally:
            try:
                self.consumer.unassign()
            except KafkaException:
                pass
        return histories

    @staticmethod
    def _fold(batch: list[Message], end: int, histories: OrderedDict[str, list[str]], users: int) -> bool:
        """Fold messages below ``end`` into ``histories`` as the real-time path would, keeping the
        ``users`` most recently seen; True once ``end`` is reached."""
        done = PartitionTail._fold_messages(batch, end, histories)
        while len(histories) > users:  # a backlog's messages hold thousands of users each
            histories.popitem(last=False)
        return done

    @staticmethod
    def _fold_messages(batch: list[Message], end: int, histories: OrderedDict[str, list[str]]) -> bool:
        """:meth:`_fold` without the bound on users."""
        for message in batch:
            if message.error():
                continue
            if message.offset() >= end:
                return True
            try:
                features = decode_feature_batch(message.value())
            except FeatureBatchDecodeError:
                continue  # skipped by the real-time path too
            for user in features.users:
                histories.pop(user.user_id, None)  # to the newest end
                histories[user.user_id] = user.history
            for user_id in features.forgotten:
                histories.pop(user_id, None)
            if message.offset() >= end - 1:
                return True
        return False
