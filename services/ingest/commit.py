"""What every offset commit waits for, in order, and what a rebalance resets of it.

An input offset may be committed only once everything its run caused is out: its features,
re-keyed events and dead letters (the fold sends them before Faust acknowledges the run), its
users' states in the ``user_state`` changelog, and its events' popularity on
``streamrec.item-events``. The last two wait in memory across runs (``write_back.py``,
``popularity_deltas.py``), so the consumer awaits :meth:`CommitHook.before_commit` before every
commit, a rebalance's included (``transport.EagerConsumer.commit``). The steps:

1. send the pending popularity of every partition (awaits the producer);
2. write the held user states of the partitions still owned, and empty the popularity an older
   version stored in ``user_state`` (synchronous: each partition's write goes to the store and
   queues its changelog record batch, ``changelog_writer.py``);
3. Faust picks the offsets to commit: the acknowledged runs';
4. Faust flushes the producer, which first waits until the changelog writers handed their queued
   batches over (``transport.IngestProducer``; ``acks=-1``: the broker has everything of steps 1
   and 2);
5. Faust commits the offsets.

Why this order: step 2 is synchronous and nothing awaits between it and step 3, so no run can be
folded in between; a run is acknowledged only after it held its states, so every run whose offset
is picked has its states written. Step 1 awaits sends, and a run folded meanwhile has its
popularity pending for the next flush (the timer, within a second) while its offset may be
committed now: the one gap, as it has always been. A crash before step 5 leaves the offsets where
they were: the input since then is read again, and the users' de-duplication windows drop what
the changelog already holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from streamrec.ingest.popularity_deltas import PendingPopularity
from streamrec.ingest.write_back import StateWriteBack


class CommitHook:
    """Runs steps 1 and 2 before every commit; drops what other workers own after a rebalance."""

    def __init__(
        self,
        write_back: StateWriteBack,
        popularity: PendingPopularity,
        user_state: Mapping[str, Any],
        owned_partitions: Callable[[], set[int]],
    ) -> None:
        self.write_back = write_back
        self.popularity = popularity
        self.user_state = user_state  # the table user_state (read, for an older version's popularity)
        self.owned_partitions = owned_partitions

    async def before_commit(self) -> None:
        """Send the popularity, then write the held states: all that the commit covers is then sent
        (Faust flushes the producer before it commits)."""
        await self.popularity.flush()
        emptied = self.popularity.stored_to_empty()
        self.popularity.emptied(self.write_back.write(self.owned_partitions(), emptied))

    async def recover_pending_popularity(self) -> None:
        """After every rebalance (``user_state``'s recovery): forget what other workers own now, and
        take over the unsent popularity an older version left in user_state for the partitions this
        worker owns."""
        owned = self.owned_partitions()
        self.write_back.retain(owned)
        self.popularity.recover(owned, self.user_state)
