"""How ingest bundles events between its agents (services/ingest/bundles.py), and its eager delivery."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.partitioner import DefaultPartitioner

from streamrec.ingest.bundles import (
    event_bundle,
    group_by_partition,
    item_event_bundle,
    partition_for,
    unbundle_events,
    unbundle_item_events,
)
from streamrec.ingest.transport import start_eagerly
from streamrec.shared.events import Interaction


def interaction(user: str, item: str, ts: float, event_id: str | None = None) -> Interaction:
    return Interaction(
        user_id=user, item_id=item, event_type="rating", timestamp=ts, event_id=event_id, value=4.0
    )


def test_a_user_always_maps_to_the_partition_kafkas_default_partitioner_picks_for_its_key() -> None:
    # Messages of the previous release were keyed by user id and partitioned by the producer:
    # the bundles must land where those did, or an upgrade would split a user's state.
    partitions = list(range(8))
    for n in range(500):
        user = f"user-{n}-é"
        assert partition_for(user, 8) == DefaultPartitioner()(user.encode(), partitions, partitions)


def test_grouping_keeps_every_event_once_and_each_partitions_order() -> None:
    events = [interaction(f"u{n % 37}", f"i{n}", float(n)) for n in range(1000)]
    groups = group_by_partition(events, 4)
    assert sorted(groups) == [0, 1, 2, 3]
    assert sorted(e.item_id for group in groups.values() for e in group) == sorted(e.item_id for e in events)
    for partition, group in groups.items():
        assert {partition_for(e.user_id, 4) for e in group} == {partition}
        assert [e.timestamp for e in group] == sorted(e.timestamp for e in group)


def test_event_bundles_round_trip_and_the_older_single_event_form_is_still_read() -> None:
    events = [interaction("u1", "i1", 1.0, "e1"), interaction("u1", "i2", 2.0)]
    assert unbundle_events(event_bundle(events)) == events
    assert unbundle_events(events[0].to_dict()) == [events[0]]


def test_item_event_bundles_round_trip_and_the_older_single_event_form_is_still_read() -> None:
    events = [interaction("u1", "i1", 1.0), interaction("u2", "i1", 2.0)]
    expected = [("i1", 1.0, events[0].weight), ("i1", 2.0, events[1].weight)]
    assert unbundle_item_events(item_event_bundle(events)) == expected
    assert (
        unbundle_item_events({"item_id": "i1", "timestamp": 1.0, "weight": events[0].weight}) == expected[:1]
    )


# --- eager delivery (transport.start_eagerly) ---------------------------------------------------


def test_a_coroutine_that_never_waits_finishes_without_a_task() -> None:
    async def main() -> None:
        async def ready() -> str:
            return "done"

        assert start_eagerly(ready()) == (True, "done")

    asyncio.run(main())


def test_a_coroutine_that_waits_is_finished_by_a_task_with_its_result() -> None:
    async def main() -> None:
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        queue.put_nowait(1)

        async def put() -> str:
            await asyncio.sleep(0)  # a bare yield
            await queue.put(2)  # waits on a future until there is room
            return "put"

        finished, task = start_eagerly(put())
        assert not finished
        await asyncio.sleep(0.01)
        assert not task.done()
        assert queue.get_nowait() == 1
        assert await task == "put"
        assert queue.get_nowait() == 2

    asyncio.run(main())


def test_errors_and_cancellation_reach_the_coroutine() -> None:
    async def main() -> None:
        cleaned_up = asyncio.Event()
        started = asyncio.Event()

        async def fails_later() -> None:
            await asyncio.sleep(0.001)
            raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            await start_eagerly(fails_later())[1]

        async def waits_forever() -> None:
            try:
                started.set()
                await asyncio.Event().wait()
            finally:
                cleaned_up.set()

        for turns_before_cancel in (0, 1):  # cancelled before the task's first step, and after
            started.clear()
            cleaned_up.clear()
            finished, task = start_eagerly(waits_forever())
            assert not finished and started.is_set()
            for _ in range(turns_before_cancel):
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert cleaned_up.is_set()

    asyncio.run(main())
