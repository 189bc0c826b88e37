"""User states written behind: held in memory, written to ``user_state`` every half second and before each commit.

A Faust table sends a changelog record for every write, and a run's writes leave as one record
batch per partition. To keep runs short (fresh lists) without a record batch per run on every
changelog partition, the states a run changes stay here. A partition's states are written once
they have waited half a second, at the start of the partition's next run (their features went out
with the run before), and :meth:`StateWriteBack.write` writes everything still held just before
each offset commit (the record cache of Kafka Streams works the same way). What is committed is
therefore always backed by the changelog; after a crash the input since the last commit is read
again, and what the changelog already holds of it is dropped as duplicates by event id.

Faust derives a table write's partition from the event being processed, and a commit happens
outside any event: a partition's writes are made under the last event seen on that partition.
A timer's writes to a partition no event may have come on since the start (expired erasure
markers) go under a :class:`PartitionEvent` instead.

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
from typing import Any

import faust
from faust.streams import _current_event  # where Table.__setitem__ reads its partition from
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


class PartitionEvent:
    """What Faust's tables read of the current event to route a write: its message's topic and
    partition. A stand-in for a stream event of that partition, for writes outside any stream (a
    timer's) when no event of the partition may have been seen since the worker started."""

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

    def __init__(self, table: faust.Table) -> None:
        self.table = table
        self._states: dict[int, dict[str, UserState]] = {}
        self._events: dict[int, EventT] = {}  # the latest event of each partition, kept across writes
        self._held_since: dict[int, float] = {}  # partition -> when its oldest held state came

    def get(self, partition: int, user_id: str) -> UserState | None:
        """The user's latest state: held here if changed since the last write, else from the table."""
        held = self._states.get(partition)
        if held is not None and (state := held.get(user_id)) is not None:
            return state
        try:
            # The store under the table: one lookup, where ``table.get`` asks the store twice
            # (``in``, then ``[]``), encoding the key each time, for a sensor call.
            stored = self.table.data[user_id]
        except KeyError:
            return None
        return UserState.from_dict(stored)

    def hold(self, event: EventT, states: dict[str, UserState]) -> None:
        """Keep a run's changed ``states`` for the next write."""
        partition = event.message.partition
        self._events[partition] = event
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

    def write_partition(self, partition: int, extra: Mapping[str, Any] | None = None) -> bool:
        """Write what is held for one ``partition`` now, and ``extra`` table values; False if no
        event was seen on it yet (nothing can be written there)."""
        event = self._events.get(partition)
        states = self._states.pop(partition, {})
        self._held_since.pop(partition, None)
        if event is None:
            return False
        with as_current_event(event):
            for user_id, state in states.items():
                self.table[user_id] = state.to_dict()
            for key, value in (extra or {}).items():
                self.table[key] = value
        return True

    def write(self, owned: Collection[int], extra: Mapping[int, Mapping[str, Any]]) -> set[int]:
        """Write the held states, and ``extra`` table values per partition, of the partitions still
        ``owned``; drop the others' (their new owner reads the input again from the last commit).
        A partition no event was seen on yet cannot be written. Returns the partitions written."""
        written = {
            partition
            for partition in list(self._events)
            if partition in owned and self.write_partition(partition, extra.get(partition))
        }
        self._states.clear()
        self._held_since.clear()
        return written

    def retain(self, owned: Collection[int]) -> None:
        """Drop what is held for partitions not ``owned`` (any more) by this worker."""
        for partition in set(self._events) - set(owned):
            self._states.pop(partition, None)
            self._held_since.pop(partition, None)
            del self._events[partition]

    def __len__(self) -> int:
        return sum(map(len, self._states.values()))
