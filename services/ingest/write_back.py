"""User states written behind: held in memory, written to ``user_state`` every half second and before each commit.

Each write of a table sends a changelog record, and a partition's writes leave as one record batch
(``changelog_writer.py``). To keep runs short (fresh lists) without a record batch per run on
every changelog partition, the states a run changes stay here. A partition's states are written
once they have waited half a second, at the start of the partition's next run (their features
went out with the run before), and :meth:`StateWriteBack.write` writes everything still held just
before each offset commit (the record cache of Kafka Streams works the same way). What is
committed is therefore always backed by the changelog; after a crash the input since the last
commit is read again, and what the changelog already holds of it is dropped as duplicates by
event id.

A partition's runs and forget requests take turns (:class:`PartitionLocks`): a forget must not
land between a run's held states and the features it sends, or the erased user would come back
with them.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, Protocol

from faust.streams import _current_event  # where Faust's tables and stores read the partition from
from faust.types import EventT

from streamrec.ingest.features import UserState

# Held user states are written this often per partition (and before every commit): a few record
# batches a second, and no commit-long stall of the event loop.
WRITE_BACK_SECONDS = 0.5


class PartitionLocks:
    """One lock per partition, taken by each run's fold and each forget request of the partition."""

    def __init__(self) -> None:
        self._locks: dict[int, asyncio.Lock] = {}

    def __call__(self, partition: int) -> asyncio.Lock:
        """The lock of ``partition`` (created at its first use)."""
        lock = self._locks.get(partition)
        if lock is None:
            lock = self._locks[partition] = asyncio.Lock()
        return lock


class StoredTable(Protocol):
    """A table as the write-back uses it (``changelog_writer.ChangelogWriter``)."""

    def read(self, partition: int, key: str) -> Any | None:
        """The stored value of ``key`` on ``partition``, or None."""

    def write(self, partition: int, values: Mapping[str, Any]) -> None:
        """Store ``values`` on ``partition`` (None deletes), with their changelog records."""


class PartitionEvent:
    """What Faust's tables and stores read of the current event to route a write: its message's
    topic and partition. A stand-in for a stream event of that partition, for writes outside any
    stream (a timer's, a batch's) when no event of the partition may have been seen since the
    worker started."""

    def __init__(self, topic: str, partition: int) -> None:
        self.message = SimpleNamespace(topic=topic, partition=partition)


@contextmanager
def as_current_event(event: EventT | PartitionEvent) -> Iterator[None]:
    """Make ``event`` Faust's current event, so table writes go to its partition."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class StateWriteBack:
    """The changed user states of each partition since the last :meth:`write`, read before the table."""

    def __init__(self, table: StoredTable) -> None:
        self.table = table
        self._states: dict[int, dict[str, UserState]] = {}
        self._held_since: dict[int, float] = {}  # partition -> when its oldest held state came

    def get(self, partition: int, user_id: str) -> UserState | None:
        """The user's latest state: held here if changed since the last write, else from the table."""
        held = self._states.get(partition)
        if held is not None and (state := held.get(user_id)) is not None:
            return state
        stored = self.table.read(partition, user_id)
        return None if stored is None else UserState.from_dict(stored)

    def hold(self, partition: int, states: dict[str, UserState]) -> None:
        """Keep a run's changed ``states`` of ``partition`` for the next write."""
        if partition not in self._held_since:
            self._held_since[partition] = time.monotonic()
        self._states.setdefault(partition, {}).update(states)

    def forget(self, partition: int, user_id: str) -> None:
        """Drop what is held of an erased user (``streamrec users forget``): it is never written."""
        held = self._states.get(partition)
        if held is not None:
            held.pop(user_id, None)

    def held_seconds(self, partition: int) -> float:
        """How long the oldest state held for ``partition`` has waited (0 if none)."""
        since = self._held_since.get(partition)
        return 0.0 if since is None else time.monotonic() - since

    def write_partition(self, partition: int, extra: Mapping[str, Any] | None = None) -> None:
        """Write what is held for one ``partition`` now, and ``extra`` table values."""
        states = self._states.pop(partition, {})
        self._held_since.pop(partition, None)
        values: dict[str, Any] = {user_id: state.to_dict() for user_id, state in states.items()}
        values.update(extra or {})
        self.table.write(partition, values)

    def write(self, owned: Collection[int], extra: Mapping[int, Mapping[str, Any]]) -> set[int]:
        """Write the held states, and ``extra`` table values per partition, of the partitions still
        ``owned``; drop the others' (their new owner reads the input again from the last commit).
        Returns the partitions written."""
        written = {partition for partition in {*self._states, *extra} if partition in owned}
        for partition in written:
            self.write_partition(partition, extra.get(partition))
        self._states.clear()
        self._held_since.clear()
        return written

    def retain(self, owned: Collection[int]) -> None:
        """Drop what is held for partitions not ``owned`` (any more) by this worker."""
        for partition in set(self._states) - set(owned):
            del self._states[partition]
            self._held_since.pop(partition, None)

    def __len__(self) -> int:
        return sum(map(len, self._states.values()))
