"""The fold: a run of records becomes its users' new states and the features messages announcing them.

Two parts, the computation apart from its I/O:

- :class:`Fold` is the per-user feature update of one run, on plain data: each record is
  validated (input runs) or decoded (re-keyed runs), sent away if not at home (``rekeying.py``),
  dropped if its user was forgotten after it (``erasure.py``) or if it is a duplicate, else
  applied to its user's state (``features.py``). It sends nothing and stores nothing: it returns a
  :class:`FoldedRun`. Unit tests call it with plain records and a dictionary of states.
- :class:`FeatureBuilder` is the two agents around it, ``build_features`` (the input) and
  ``build_rekeyed_features`` (the re-key topic). Per run, under the partition's lock
  (``write_back.PartitionLocks``, shared with the forget requests):

  1. the partition's states held for half a second or more are written to ``user_state``: their
     features went out a run ago, so the changelog never gets ahead of the features it stands for;
  2. the run is folded;
  3. its changed states are held for the next commit (``write_back.py``) and its accepted events
     counted towards item popularity (``popularity_deltas.py``);
  4. then, and only then, the sends: dead letters, re-keyed events, features messages.

  Steps 1 to 3 are synchronous: the two agents folding one partition never interleave between
  reading a user's state and holding it back, and a commit (whose hook writes what is held and
  sends the pending popularity, ``commit.py``) sees all of a run's effects or none. Faust
  acknowledges a run once the agent's body is done with it, after step 4, so a committed offset
  is always backed by the run's sends and held states.

A features message (:class:`~streamrec.shared.messages.FeatureBatch`) carries users' snapshots
and their accepted events; one run gives one per partition, or more if it is large
(:func:`feature_batches`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import faust
import orjson

from streamrec.ingest.dead_letters import DeadLetters, validate_event
from streamrec.ingest.erasure import ErasureMarkers
from streamrec.ingest.features import UserState, apply_event
from streamrec.ingest.metrics import (
    EVENT_AGE_SECONDS,
    EVENTS_ACCEPTED,
    EVENTS_DUPLICATE,
    EVENTS_ERASED,
    EVENTS_VALID,
    FEATURE_UPDATE_SECONDS,
    IngestCounters,
)
from streamrec.ingest.popularity_deltas import PendingPopularity
from streamrec.ingest.rekeying import is_home, partition_for
from streamrec.ingest.transport import RecordRun
from streamrec.ingest.write_back import WRITE_BACK_SECONDS, PartitionLocks, StateWriteBack
from streamrec.shared.events import Interaction
from streamrec.shared.messages import FeatureBatch, UserSnapshot
from streamrec.shared.settings import Settings

# A features message holds users until their history items + EVENT_UNITS × their events reach
# this: about 8 bytes of JSON per unit, so a message stays near 300 KB, far below Kafka's 1 MB.
FEATURE_BATCH_MAX_UNITS = 40_000
EVENT_UNITS = 20


class UserStates(Protocol):
    """Where the fold reads a user's latest state (``StateWriteBack``: held, else the table)."""

    def get(self, partition: int, user_id: str) -> UserState | None: ...


@dataclass(slots=True)
class FoldedRun:
    """What folding one run produced: nothing of it is sent or stored yet."""

    # The users with an accepted event and their new states, in first-touch order.
    states: dict[str, UserState]
    accepted: list[Interaction]  # in the order they were applied
    rekey: list[Interaction]  # valid events not at home: for the re-key topic, in input order
    refused: list[tuple[Any, str, str]]  # (record, reason, detail): for the dead-letter topic
    valid: int  # records that were valid events at home (of input runs: re-keyed ones were counted)
    erased: int  # events of forgotten users, stamped up to their forget request: dropped
    duplicates: int  # events whose id the user's state had seen: dropped


class Fold:
    """The per-user feature update of one run, with no I/O."""

    def __init__(self, settings: Settings, states: UserStates, markers: ErasureMarkers) -> None:
        self.settings = settings
        self.states = states
        self.markers = markers

    def fold(self, partition: int, records: Iterable[Any], rekeyed: bool) -> FoldedRun:
        """Fold ``records`` (Kafka messages of ``partition``: key, value, topic, partition, offset)
        into their users' states; ``rekeyed`` for records of the re-key topic, whose events were
        validated already. States are read from ``self.states`` once per user and run, and changed
        in place: the returned states are the objects read."""
        settings, markers, stored_state = self.settings, self.markers, self.states.get
        states: dict[str, UserState] = {}  # this run's users
        touched: dict[str, None] = {}  # users with an accepted event, in first-touch order
        accepted: list[Interaction] = []
        rekey: list[Interaction] = []
        cutoffs: dict[str, float] = {}  # this run's forgotten users: their events up to then are dropped
        refused: list[tuple[Any, str, str]] = []
        valid = erased = duplicates = 0
        for record in records:
            if rekeyed:
                try:  # written by ingest itself: only a bug or a foreign producer makes one unreadable
                    event = Interaction.from_dict(orjson.loads(record.value))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    refused.append((record, "unexpected_error", f"unreadable re-keyed record: {exc!r}"))
                    continue
            elif isinstance(checked := validate_event(record, settings), tuple):
                refused.append((record, *checked))
                continue
            elif not is_home(record.key, checked):
                rekey.append(checked)
                continue
            else:
                event = checked
            valid += 1
            state = states.get(event.user_id)
            if state is None:
                if (cutoff := markers.cutoff(partition, event.user_id)) is not None:
                    cutoffs[event.user_id] = cutoff
                stored = stored_state(partition, event.user_id)
                state = states[event.user_id] = UserState() if stored is None else stored
            if cutoffs and event.timestamp <= cutoffs.get(event.user_id, -math.inf):
                erased += 1
                continue
            if not apply_event(state, event, settings):
                duplicates += 1
                continue
            accepted.append(event)
            touched[event.user_id] = None
        changed = {user_id: states[user_id] for user_id in touched}
        return FoldedRun(changed, accepted, rekey, refused, valid, erased, duplicates)


def feature_batches(
    users: Iterable[str], states: dict[str, UserState], events: list[Interaction], now: float
) -> list[FeatureBatch]:
    """The features messages of one run: its users' states and accepted events, in chunks of users
    small enough for one Kafka message (``FEATURE_BATCH_MAX_UNITS``)."""
    events_of: dict[str, list[Interaction]] = {}
    for event in events:
        events_of.setdefault(event.user_id, []).append(event)
    batches: list[FeatureBatch] = []
    snapshots: list[UserSnapshot] = []
    chunk_events: list[Interaction] = []
    units = 0
    for user in users:
        state = states[user]
        cost = len(state.history) + EVENT_UNITS * len(events_of[user])
        if snapshots and units + cost > FEATURE_BATCH_MAX_UNITS:
            batches.append(FeatureBatch(snapshots, chunk_events, now))
            snapshots, chunk_events, units = [], [], 0
        snapshots.append(UserSnapshot(user, state.history_item_ids(), state.event_count))
        chunk_events.extend(events_of[user])
        units += cost
    if snapshots:
        batches.append(FeatureBatch(snapshots, chunk_events, now))
    return batches


class FeatureBuilder:
    """The agents ``build_features`` and ``build_rekeyed_features``: fold each run, hold its states,
    announce it (the steps of the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        fold: Fold,
        write_back: StateWriteBack,
        popularity: PendingPopularity,
        locks: PartitionLocks,
        dead_letters: DeadLetters,
        rekeyed_events: faust.TopicT,
        user_features: faust.TopicT,
        counters: IngestCounters,
    ) -> None:
        self.settings = settings
        self.fold = fold
        self.write_back = write_back
        self.popularity = popularity
        self.locks = locks
        self.dead_letters = dead_letters
        self.rekeyed_events = rekeyed_events
        self.user_features = user_features
        self.counters = counters

    async def build_features(self, stream: faust.StreamT[Any]) -> None:
        """Validate and fold each run of input records; Faust acks a run once this body is done with it."""
        async for event in stream.events():
            await self.fold_run(event, rekeyed=False)

    async def build_rekeyed_features(self, stream: faust.StreamT[Any]) -> None:
        """Fold each run of re-keyed events (valid, on their user's home partition)."""
        async for event in stream.events():
            await self.fold_run(event, rekeyed=True)

    async def fold_run(self, event_of_run: faust.types.EventT, rekeyed: bool) -> None:
        """Fold a run into its users' states (held until the commit) and announce them, never while
        a forget request of its partition runs.

        Input runs are validated and their events not keyed by their user go to the re-key topic;
        runs of the re-key topic hold events validated already. (``bench/ingest_profile.py``
        counts the stacks through this method's name as the agent's time.)"""
        run: RecordRun = event_of_run.message
        partition = run.partition
        async with self.locks(partition):
            started = time.perf_counter()
            # 1. States of earlier runs, whose features went out a run ago.
            if self.write_back.held_seconds(partition) >= WRITE_BACK_SECONDS:
                self.write_back.write_partition(partition)
            # 2.-3. Synchronous up to here: no other fold or forget of the partition in between.
            folded = self.fold.fold(partition, run.value, rekeyed)
            self.write_back.hold(partition, folded.states)
            self.popularity.add(partition, folded.accepted)
            self._count_dropped(folded)
            # 4. The sends.
            await self._send(partition, folded, rekeyed)
            FEATURE_UPDATE_SECONDS.observe(time.perf_counter() - started)

    def _count_dropped(self, folded: FoldedRun) -> None:
        if folded.erased:
            self.counters.erased += folded.erased
            EVENTS_ERASED.inc(folded.erased)
        if folded.duplicates:
            self.counters.duplicates += folded.duplicates
            EVENTS_DUPLICATE.inc(folded.duplicates)

    async def _send(self, partition: int, folded: FoldedRun, rekeyed: bool) -> None:
        """Dead letters, then re-keyed events, then the features messages of the folded run."""
        for record, reason, detail in folded.refused:
            await self.dead_letters.send(record, record.value or b"", reason, detail)
        if not rekeyed:
            EVENTS_VALID.inc(folded.valid + len(folded.rekey))
        for event in folded.rekey:
            self.counters.rekeyed += 1
            await self.rekeyed_events.send(
                key=event.user_id.encode(),
                value=orjson.dumps(event.to_dict()),
                partition=partition_for(event.user_id, self.settings.partitions),
            )
        now = time.time()
        accepted = folded.accepted
        for batch in feature_batches(folded.states, folded.states, accepted, now):
            await self.user_features.send(value=batch.to_json(), partition=partition)
        for event in accepted:
            EVENT_AGE_SECONDS.observe(max(0.0, now - event.timestamp))
        self.counters.accepted += len(accepted)
        EVENTS_ACCEPTED.inc(len(accepted))
