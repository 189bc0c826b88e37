"""Erasure markers: which forgotten users' late events ingest must still drop, as pure logic.

After ``streamrec users forget USER`` ingest deletes the user's state, but events of that user
may still be on their way (in the input or the re-key topic, or stamped earlier by a producer
that sends late). Each is an event with a timestamp up to the request's ``requested_at``: it
must be dropped, not start a history that resurrects the user. So for ``erasure_hold_seconds``
ingest keeps a marker per partition: a hash of the user id (never the id itself) and the
request's time, in the table ``erasure_markers`` (its changelog makes it survive restarts) and
mirrored here, so that a run checks it with a dictionary lookup and only while markers exist.
An event stamped after ``requested_at`` starts a new history.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

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
