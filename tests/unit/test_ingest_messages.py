"""Ingest's internal messages (the home rule in services/ingest/rekeying.py, popularity deltas) and its eager delivery (transport.py)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.partitioner import DefaultPartitioner

from streamrec.ingest.features import ItemPopularity, add_item_event, merge_popularity
from streamrec.ingest.popularity_deltas import delta_messages, read_deltas
from streamrec.ingest.rekeying import is_home, partition_for
from streamrec.ingest.transport import IngestApp, start_eagerly
from streamrec.shared.events import Interaction

HALF_LIFE = 24.0


def interaction(user: str, item: str, ts: float, event_id: str | None = None) -> Interaction:
    return Interaction(
        user_id=user, item_id=item, event_type="rating", timestamp=ts, event_id=event_id, value=4.0
    )


def test_a_user_always_maps_to_the_partition_kafkas_default_partitioner_picks_for_its_key() -> None:
    # Re-keyed events must land where a Java-compatible producer (aiokafka, streamrec's publisher)
    # puts the user's keyed events, or the user's state would split across partitions.
    partitions = list(range(8))
    for n in range(500):
        user = f"user-{n}-é"
        assert partition_for(user, 8) == DefaultPartitioner()(user.encode(), partitions, partitions)


def test_only_an_event_keyed_by_its_own_user_id_is_at_home() -> None:
    event = interaction("42", "i1", 1.0)
    assert is_home(b"42", event)
    assert not is_home(None, event)
    assert not is_home(b"43", event)
    assert not is_home(b"42 ", event)  # the key must be the normalised id itself


def test_popularity_deltas_add_up_to_the_same_scores_in_any_grouping() -> None:
    events = [(f"i{n % 7}", 1000.0 + 3600.0 * ((n * 37) % 50), 1.0 + n % 3) for n in range(200)]
    one_by_one: dict[str, ItemPopularity] = {}
    for item, ts, weight in events:
        add_item_event(one_by_one.setdefault(item, ItemPopularity()), ts, weight, HALF_LIFE)
    merged: dict[str, ItemPopularity] = {}
    for start in range(0, len(events), 23):  # deltas of uneven groups, merged out of time order
        delta: dict[str, ItemPopularity] = {}
        for item, ts, weight in events[start : start + 23]:
            add_item_event(delta.setdefault(item, ItemPopularity()), ts, weight, HALF_LIFE)
        for value in delta_messages(delta):
            for item, popularity in read_deltas(value):
                merge_popularity(merged.setdefault(item, ItemPopularity()), popularity, HALF_LIFE)
    assert merged.keys() == one_by_one.keys()
    for item, expected in one_by_one.items():
        got = merged[item]
        assert got.count == expected.count and got.as_of == expected.as_of
        assert got.score == pytest.approx(expected.score, rel=1e-9)


def test_the_older_item_event_forms_are_still_read_as_one_event_deltas() -> None:
    bundle = {"events": [["i1", 1.0, 2.0], ["i2", 3.0, 1.0]]}
    assert read_deltas(bundle) == [("i1", ItemPopularity(2.0, 1.0, 1)), ("i2", ItemPopularity(1.0, 3.0, 1))]
    assert read_deltas({"item_id": "i1", "timestamp": 1.0, "weight": 2.0}) == [
        ("i1", ItemPopularity(2.0, 1.0, 1))
    ]


def test_a_large_delta_is_split_into_messages_of_bounded_size() -> None:
    deltas = {f"i{n}": ItemPopularity(1.0, 1.0, 1) for n in range(12_001)}
    messages = list(delta_messages(deltas))
    assert [len(m["items"]) for m in messages] == [5_000, 5_000, 2_001]
    assert {item for m in messages for item, *_ in m["items"]} == deltas.keys()


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


# --- the producer a message awaits (IngestApp.maybe_start_producer) ------------------------------


class _Producer:
    """Stands in for Faust's producer service: counts starts, and takes a turn of the loop to start."""

    def __init__(self, started: bool) -> None:
        self.started = started
        self.starts = 0

    async def maybe_start(self) -> None:
        if not self.started:
            await asyncio.sleep(0)
            self.starts += 1
            self.started = True


def _app_with(producer: _Producer) -> IngestApp:
    app = IngestApp("test-producer-start", broker="kafka://127.0.0.1:1")
    app._producer = producer  # type: ignore[assignment]
    return app


def test_a_running_producer_is_returned_without_a_turn_of_the_loop() -> None:
    # Faust's own version yields three times per produced message: a table write's changelog
    # records then trickled into several record batches.
    async def main() -> None:
        producer = _Producer(started=True)
        assert start_eagerly(_app_with(producer).maybe_start_producer()) == (True, producer)

    asyncio.run(main())


def test_concurrent_first_callers_start_the_producer_once() -> None:
    async def main() -> None:
        producer = _Producer(started=False)
        app = _app_with(producer)
        results = await asyncio.gather(*(app.maybe_start_producer() for _ in range(5)))
        assert results == [producer] * 5 and producer.starts == 1

    asyncio.run(main())
