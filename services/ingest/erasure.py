"""Erasure: forget requests, and the markers that drop a forgotten user's late events.

After ``streamrec users forget USER`` ingest deletes the user's state, but events of that user
may still be on their way (in the input or the re-key topic, or stamped earlier by a producer
that sends late). Each is an event with a timestamp up to the request's ``requested_at``: it
must be dropped, not start a history that resurrects the user. So for ``erasure_hold_seconds``
ingest keeps a marker per partition: a hash of the user id (never the id itself) and the
request's time, in the table ``erasure_markers`` (its changelog makes it survive restarts) and
mirrored here, so that a run checks it with a dictionary lookup and only while markers exist.
An event stamped after ``requested_at`` starts a new history.

Two parts: :class:`ErasureMarkers` is the markers as pure logic (the fold asks it for a user's
cut-off); :class:`Erasure` is the agent ``forget_users`` (one request on every partition of the
control topic), the timer ``expire_erasure_markers`` and the markers' recovery after a rebalance.
A forget request takes its partition's turn with the runs (``write_back.PartitionLocks``): it must
not land between a run's held states and the features that run sends, or the user would come back.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import faust

from streamrec.ingest.metrics import IngestCounters
from streamrec.ingest.rekeying import partition_for
from streamrec.ingest.write_back import (
    PartitionEvent,
    PartitionLocks,
    StateWriteBack,
    StoredTable,
    as_current_event,
)
from streamrec.shared.logs import get_logger
from streamrec.shared.messages import FeatureBatch, ForgetUser
from streamrec.shared.settings import Settings

log = get_logger(__name__)

ERASURE_EXPIRY_SECONDS = 60.0  # expired erasure markers are deleted this often (or each hold, if shorter)
ERASURE_TABLE_MEMORY_MB = 4  # the markers are few and small: the smallest RocksDB budget

# The id is hashed with a fixed, streamrec-specific prefix: a marker names no user in the clear.
_HASH_PREFIX = b"streamrec-erasure:"


def user_hash(user_id: str) -> str:
    """The key of a user's marker: SHA-256 of the id (hex), so no table holds the id itself."""
    return hashlib.sha256(_HASH_PREFIX + user_id.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Marker:
    """One forgotten user's marker: events stamped up to ``requested_at`` are dropped until ``expires_at``."""

    requested_at: float  # the forget request's time (epoch s)
    expires_at: float  # when the marker is deleted (epoch s, wall clock)

    def to_dict(self) -> dict[str, float]:
        """JSON-ready form (the table value)."""
        return {"requested_at": self.requested_at, "expires_at": self.expires_at}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Marker:
        """Inverse of :meth:`to_dict`."""
        return cls(float(data["requested_at"]), float(data["expires_at"]))


class ErasureMarkers:
    """The markers of the partitions this worker owns, by partition and user hash."""

    def __init__(self, hold_seconds: float) -> None:
        self.hold_seconds = hold_seconds
        self._markers: dict[int, dict[str, Marker]] = {}

    def mark(self, partition: int, user_id: str, requested_at: float, now: float) -> tuple[str, Marker]:
        """Remember that ``user_id`` was forgotten; returns the table key and value to store.

        A second request for the same user keeps the later cut-off and the later expiry."""
        key = user_hash(user_id)
        held = self._markers.setdefault(partition, {})
        old = held.get(key)
        marker = Marker(requested_at, now + self.hold_seconds)
        if old is not None:
            marker = Marker(max(old.requested_at, requested_at), max(old.expires_at, marker.expires_at))
        held[key] = marker
        return key, marker

    def load(self, partition: int, key: str, value: dict[str, Any]) -> None:
        """Mirror a marker read from the table (after a rebalance)."""
        self._markers.setdefault(partition, {})[key] = Marker.from_dict(value)

    def cutoff(self, partition: int, user_id: str) -> float | None:
        """The time up to which ``user_id``'s events are dropped on ``partition``, or None.

        Free while the partition has no markers (the user id is hashed only when some exist)."""
        held = self._markers.get(partition)
        if not held:
            return None
        marker = held.get(user_hash(user_id))
        return None if marker is None else marker.requested_at

    def expired(self, partition: int, now: float) -> list[str]:
        """Remove and return the keys of ``partition``'s markers whose hold is over at ``now``."""
        held = self._markers.get(partition)
        if not held:
            return []
        done = [key for key, marker in held.items() if marker.expires_at <= now]
        for key in done:
            del held[key]
        return done

    def partitions(self) -> list[int]:
        """Partitions that hold markers."""
        return [partition for partition, held in self._markers.items() if held]

    def clear(self) -> None:
        """Forget every marker (before mirroring the table again after a rebalance)."""
        self._markers.clear()

    def __len__(self) -> int:
        return sum(map(len, self._markers.values()))


class Erasure:
    """Applies forget requests on this worker's partitions and keeps the markers and their table."""

    def __init__(
        self,
        settings: Settings,
        markers: ErasureMarkers,
        marker_table: MutableMapping[str, Any],
        user_state: StoredTable,
        write_back: StateWriteBack,
        locks: PartitionLocks,
        user_features: faust.TopicT,
        owned_partitions: Callable[[], set[int]],
        counters: IngestCounters,
    ) -> None:
        self.settings = settings
        self.markers = markers
        self.marker_table = marker_table  # the table erasure_markers
        self.user_state = user_state  # the table user_state, through its changelog writer
        self.write_back = write_back
        self.locks = locks
        self.user_features = user_features
        self.owned_partitions = owned_partitions
        self.counters = counters

    @property
    def expiry_seconds(self) -> float:
        """How often the timer ``expire_erasure_markers`` runs."""
        return min(ERASURE_EXPIRY_SECONDS, self.settings.erasure_hold_seconds)

    async def forget_users(self, stream: faust.StreamT[Any]) -> None:
        """Apply each forget request (``streamrec users forget``, ``DELETE /users/{id}``)."""
        async for event in stream.events():
            await self.forget_user(event)

    async def forget_user(self, event: faust.types.EventT) -> None:
        """Erase a user on this control message's partition: held and stored state (the changelog
        gets a tombstone), then tell the scorer and trainer, after any features already sent."""
        partition = event.message.partition
        try:
            request = ForgetUser.from_json(event.message.value)
        except ValueError as exc:
            log.error(
                "skipping an unreadable control message", extra={"partition": partition, "error": str(exc)}
            )
            return
        user = request.user_id
        async with self.locks(partition):
            known = self.write_back.get(partition, user) is not None
            self.write_back.forget(partition, user)
            if known:
                self.user_state.write(partition, {user: None})  # a tombstone in the changelog
            with as_current_event(event):  # the marker's table write: this partition's
                # On every partition: the user's late events may come through any of them.
                key, marker = self.markers.mark(partition, user, request.requested_at, time.time())
                self.marker_table[key] = {"partition": partition, **marker.to_dict()}
            # Readers erase what came from this partition before it: only where the user was (and
            # at home, whatever they hold), so that it never overtakes a new history elsewhere.
            if known or partition == partition_for(user, self.settings.partitions):
                batch = FeatureBatch([], [], time.time(), forgotten=[user])
                await self.user_features.send(value=batch.to_json(), partition=partition)
        self.counters.forgotten += 1
        # The marker's hash, not the id: the log must not keep what was erased.
        log.info("user forgotten", extra={"partition": partition, "user_hash": key[:16]})

    async def expire_erasure_markers(self) -> None:
        """Delete the markers whose hold is over (a tombstone each, on their partition).

        No event of a marker's partition need have come since a restart (the forget request's
        offset may be committed), so the partition is named, not taken from its last event."""
        now = time.time()
        for partition in self.markers.partitions():
            with as_current_event(PartitionEvent(self.settings.topic_control, partition)):
                for key in self.markers.expired(partition, now):
                    del self.marker_table[key]

    async def load_erasure_markers(self) -> None:
        """After every rebalance (``erasure_markers``' recovery): mirror the markers of the
        partitions this worker owns now."""
        self.markers.clear()
        owned = self.owned_partitions()
        for key, value in self.marker_table.items():
            if int(value["partition"]) in owned:
                self.markers.load(int(value["partition"]), key, value)
        if len(self.markers):
            log.info("erasure markers recovered", extra={"markers": len(self.markers)})
