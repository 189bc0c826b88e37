"""Matching each published event to the first rewrite of its user's list after it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class UpdateTracker:
    """Matches each published event to the first rewrite of its user's list after it."""

    pending: dict[str, tuple[str, float]] = field(default_factory=dict)  # user -> (event id, published)
    published_at: dict[str, float] = field(default_factory=dict)  # event id -> publish time
    updated_at: dict[str, float] = field(default_factory=dict)  # event id -> its update's time
    ambiguous: set[str] = field(default_factory=set)  # users with two events in flight
    overlapped: int = 0  # events of ambiguous users: not measured
    unsolicited: int = 0  # rewrites of users with no event in flight

    def published(self, user: str, event_id: str, at: float) -> None:
        """An event of ``user`` was handed to the producer at ``at``."""
        if user in self.ambiguous:
            self.overlapped += 1
            return
        if user in self.pending:
            # Two events in flight: a later rewrite could follow either one.
            del self.pending[user]
            self.ambiguous.add(user)
            self.overlapped += 2
            return
        self.pending[user] = (event_id, at)
        self.published_at[event_id] = at

    def updated(self, user: str, at: float) -> None:
        """``user``'s list was rewritten; the notification arrived at ``at``."""
        entry = self.pending.pop(user, None)
        if entry is not None:
            self.updated_at[entry[0]] = at
        elif user not in self.ambiguous:
            self.unsolicited += 1

    def latencies_ms(self) -> list[float]:
        """Publish → update of every matched event, in ms."""
        return [(at - self.published_at[event]) * 1000 for event, at in self.updated_at.items()]
