"""Ingest's changelog writer (services/ingest/changelog_writer.py): the store first, then the
changelog in write order, the flush covering every write, the persisted offset, failures.

The producer here is a stand-in with aiokafka's batch interface (``create_batch``, ``send_batch``);
the writer on a real broker is exercised by the integration tests (a worker restoring its tables
from the changelog: tests/integration/test_kafka_faults.py, test_faults.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from faust.streams import current_event

from streamrec.ingest.changelog_writer import ChangelogWriter
from streamrec.ingest.table_codec import TableBytes

TOPIC = "streamrec-ingest-user_state-changelog"


class FakeStore:
    """Faust's store as the writer uses it: encodes, routes a write by the current event."""

    def __init__(self) -> None:
        self.rows: dict[bytes, tuple[int, bytes]] = {}  # key -> (partition, value)
        self.persisted: dict[int, int] = {}

    def _encode_key(self, key: str) -> bytes:
        return key.encode()

    def _encode_value(self, value: Any) -> bytes:
        return repr(value).encode()

    def _decode_value(self, raw: bytes) -> Any:
        return raw  # the tests compare the encoded bytes

    def _get(self, key: bytes) -> bytes | None:
        event = current_event()
        assert event is not None, "a store read outside any event"
        partition, value = self.rows.get(key, (None, None))
        return value if partition == event.message.partition else None  # one partition's database

    def _set(self, key: bytes, value: bytes) -> None:
        event = current_event()
        assert event is not None, "a store write outside any event"
        self.rows[key] = (event.message.partition, value)

    def _del(self, key: bytes) -> None:
        self.rows.pop(key, None)

    def __getitem__(self, key: str) -> Any:
        return self.rows[key.encode()][1]

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        assert tp.topic == TOPIC
        self.persisted[tp.partition] = offset


@dataclass
class FakeBatch:
    capacity: int
    records: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    closed: bool = False

    def append(self, *, timestamp: Any, key: bytes, value: bytes | None, headers: list[Any]) -> object | None:
        if self.closed or len(self.records) == self.capacity:
            self.closed = True
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeProducer:
    """aiokafka's batch interface; the broker's offsets are counted per partition, and each batch's
    acknowledgement waits until the test gives it (``ack``)."""

    capacity: int = 100
    sent: list[tuple[int, list[tuple[bytes, bytes | None]]]] = field(default_factory=list)
    acks: list[tuple[asyncio.Future[Any], int]] = field(default_factory=list)
    next_offset: dict[int, int] = field(default_factory=dict)
    gate: asyncio.Event | None = None  # when set up, a batch's hand-over waits for it
    fail: Exception | None = None

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        assert topic == TOPIC and batch.closed
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.sent.append((partition, batch.records))
        base = self.next_offset.get(partition, 0)
        self.next_offset[partition] = base + len(batch.records)
        delivered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks.append((delivered, base))
        return delivered

    def ack(self) -> None:
        for delivered, base in self.acks:
            if not delivered.done():
                delivered.set_result(SimpleNamespace(offset=base))


def new_writer(producer: FakeProducer) -> tuple[ChangelogWriter, FakeStore]:
    store = FakeStore()
    table = SimpleNamespace(data=store, changelog_topic=SimpleNamespace(get_topic_name=lambda: TOPIC))

    async def running() -> FakeProducer:
        return producer

    return ChangelogWriter(table, running), store  # type: ignore[arg-type]


def test_a_write_reaches_the_store_at_once_and_its_partition_in_one_batch() -> None:
    async def scenario() -> None:
        producer = FakeProducer()
        writer, store = new_writer(producer)

        writer.write(2, {"alice": {"n": 1}, "bob": {"n": 2}})

        # Synchronously: the store (on the partition's database), nothing sent yet.
        assert store.rows == {b"alice": (2, b"{'n': 1}"), b"bob": (2, b"{'n': 2}")}
        assert current_event() is None
        assert writer.read(2, "alice") == b"{'n': 1}" and writer.read(2, "carol") is None
        assert writer.read(1, "alice") is None  # another partition's database
        assert producer.sent == []
        await writer.handed_over()
        assert producer.sent == [(2, [(b"alice", b"{'n': 1}"), (b"bob", b"{'n': 2}")])]

    asyncio.run(scenario())


def test_batches_are_handed_over_in_write_order_and_the_flush_waits_for_all() -> None:
    async def scenario() -> None:
        producer = FakeProducer(capacity=2, gate=asyncio.Event())
        writer, store = new_writer(producer)
        writer.write(0, {"alice": 1, "bob": 1, "carol": 1})  # two batches: full after two records
        writer.write(1, {"dave": 1})
        writer.write(0, {"alice": 2, "bob": None})  # None: a tombstone

        flush = asyncio.ensure_future(writer.handed_over())
        await asyncio.sleep(0.01)
        assert not flush.done()  # the producer has not taken them yet: a flush now would miss them
        producer.gate.set()  # type: ignore[union-attr]
        await flush

        assert producer.sent == [
            (0, [(b"alice", b"1"), (b"bob", b"1")]),
            (0, [(b"carol", b"1")]),
            (1, [(b"dave", b"1")]),
            (0, [(b"alice", b"2"), (b"bob", None)]),
        ]
        assert b"bob" not in store.rows and store.rows[b"alice"] == (0, b"2")

    asyncio.run(scenario())


def test_the_persisted_offset_follows_each_acknowledged_batch() -> None:
    async def scenario() -> None:
        producer = FakeProducer(capacity=2)
        writer, store = new_writer(producer)
        writer.write(0, {"alice": 1, "bob": 1, "carol": 1})
        writer.write(3, {"dave": 1})
        await writer.handed_over()
        assert store.persisted == {}  # nothing acknowledged yet

        producer.ack()
        await asyncio.sleep(0)

        assert store.persisted == {0: 2, 3: 0}  # the last record of each partition's batches

    asyncio.run(scenario())


def test_a_batch_that_cannot_be_sent_fails_the_commit_and_every_later_write() -> None:
    async def scenario() -> None:
        producer = FakeProducer(fail=ConnectionError("broker gone"))
        writer, _ = new_writer(producer)
        writer.write(0, {"alice": 1})

        with pytest.raises(RuntimeError, match="could not be written"):
            await writer.handed_over()
        with pytest.raises(RuntimeError, match="cannot be written"):
            writer.write(0, {"bob": 1})

    asyncio.run(scenario())


def test_a_batch_the_broker_refused_fails_the_commit() -> None:
    async def scenario() -> None:
        producer = FakeProducer()
        writer, store = new_writer(producer)
        writer.write(0, {"alice": 1})
        await writer.handed_over()
        producer.acks[0][0].set_exception(ConnectionError("not enough replicas"))
        await asyncio.sleep(0)

        with pytest.raises(RuntimeError, match="could not be written"):
            writer.raise_failure()
        assert store.persisted == {}

    asyncio.run(scenario())


def test_table_bytes_are_fausts_bytes_without_its_registry() -> None:
    import faust

    from streamrec.ingest.table_codec import use_exact_size_json

    use_exact_size_json()
    app = faust.App("test-table-bytes", store="rocksdb://", autodiscover=False)
    store = app.Table("user_state", key_type=str).data
    direct = TableBytes.of(store)

    assert direct.direct  # orjson's calls, not Faust's registry
    value = {"history": [["i9", 1700000000.25, "purchase"]], "dedup": ["e1", "é"], "event_count": 7}
    for key in ("alice", "ü-1", "\x00pending-popularity:0"):
        assert direct.encode_key(key) == store._encode_key(key)
    assert direct.encode_value(value) == store._encode_value(value)
    assert direct.decode_value(store._encode_value(value)) == store._decode_value(store._encode_value(value))


def test_table_bytes_fall_back_to_faust_where_they_would_differ() -> None:
    store = FakeStore()  # encodes values with repr: not orjson's bytes

    codec = TableBytes.of(store)

    assert not codec.direct
    assert codec.encode_value == store._encode_value and codec.encode_key == store._encode_key
