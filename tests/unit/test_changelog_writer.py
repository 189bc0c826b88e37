"""Ingest's changelog writer (services/ingest/changelog_writer.py): the store first, then the
changelog in write order, the flush covering every write, the persisted offset, failures.

The table is a real Faust table on RocksDB: what the writer stores, Faust's own reads find. The
producer is a stand-in with aiokafka's batch interface (``create_batch``, ``send_batch``); the
writer on a real broker is exercised by the integration tests (a worker restoring its tables
from the changelog: tests/integration/test_kafka_faults.py, test_faults.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.streams import current_event
from faust.types import TP

from streamrec.ingest.changelog_writer import ChangelogWriter
from streamrec.ingest.table_codec import TableBytes, use_exact_size_json
from streamrec.ingest.write_back import PartitionEvent, as_current_event

APP = "test-changelog-writer"
TOPIC = f"{APP}-user_state-changelog"


def new_table(data_dir: Path) -> faust.Table:
    """A real Faust table on RocksDB (a database per partition under ``data_dir``), as ingest's."""
    use_exact_size_json()
    app = faust.App(APP, store="rocksdb://", datadir=str(data_dir), autodiscover=False)
    return app.Table("user_state", key_type=str, partitions=4)


def stored(table: faust.Table, partition: int, key: str) -> Any:
    """What Faust's own read of ``key`` finds, in the event of a message of ``partition``."""
    with as_current_event(PartitionEvent(TOPIC, partition)):
        return table.get(key)


def persisted(table: faust.Table) -> dict[int, int]:
    """The changelog offset each partition's database says it holds up to (Faust's recovery reads it)."""
    offsets = {p: table.data.persisted_offset(TP(TOPIC, p)) for p in range(4)}
    return {p: offset for p, offset in offsets.items() if offset is not None}


class ReprStore:
    """A store whose values are not orjson's bytes (encoded with repr)."""

    def _encode_key(self, key: str) -> bytes:
        return key.encode()

    def _encode_value(self, value: Any) -> bytes:
        return repr(value).encode()

    def _decode_value(self, raw: bytes) -> Any:
        return raw


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
    stuck: set[int] = field(default_factory=set)  # partitions whose batches are never handed over
    fail: Exception | None = None

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        assert topic == TOPIC and batch.closed
        if self.gate is not None:
            await self.gate.wait()
        if partition in self.stuck:
            await asyncio.Event().wait()
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


def new_writer(producer: FakeProducer, data_dir: Path) -> tuple[ChangelogWriter, faust.Table]:
    table = new_table(data_dir)

    async def running() -> FakeProducer:
        return producer

    return ChangelogWriter(table, running), table  # type: ignore[arg-type]


def test_a_write_reaches_the_store_at_once_and_its_partition_in_one_batch(tmp_path: Path) -> None:
    async def scenario() -> None:
        producer = FakeProducer()
        writer, table = new_writer(producer, tmp_path)

        writer.write(2, {"alice": {"n": 1}, "bob": {"n": 2}})

        # Synchronously: in the partition's database, where Faust reads it; nothing sent yet.
        assert stored(table, 2, "alice") == {"n": 1} and stored(table, 2, "bob") == {"n": 2}
        assert stored(table, 1, "alice") is None  # another partition's database
        assert current_event() is None
        assert writer.read(2, "alice") == {"n": 1} and writer.read(2, "carol") is None
        assert writer.read(1, "alice") is None
        assert producer.sent == []
        await writer.handed_over()
        assert producer.sent == [(2, [(b'"alice"', b'{"n":1}'), (b'"bob"', b'{"n":2}')])]

    asyncio.run(scenario())


def test_what_faust_wrote_is_read_and_overwritten(tmp_path: Path) -> None:
    async def scenario() -> None:
        writer, table = new_writer(FakeProducer(), tmp_path)
        with as_current_event(PartitionEvent(TOPIC, 3)):
            table["alice"] = {"n": 1}  # Faust's own write (e.g. restored from the changelog)

        assert writer.read(3, "alice") == {"n": 1}
        writer.write(3, {"alice": {"n": 2}})
        assert stored(table, 3, "alice") == {"n": 2}
        writer.write(3, {"alice": None})
        assert stored(table, 3, "alice") is None and writer.read(3, "alice") is None

    asyncio.run(scenario())


def test_a_partitions_records_keep_their_write_order_in_as_few_batches_as_fit(tmp_path: Path) -> None:
    async def scenario() -> None:
        producer = FakeProducer(capacity=2, gate=asyncio.Event())
        writer, table = new_writer(producer, tmp_path)
        writer.write(0, {"alice": 1, "bob": 1, "carol": 1})
        writer.write(1, {"dave": 1})
        writer.write(0, {"alice": 2, "bob": None})  # None: a tombstone

        flush = asyncio.ensure_future(writer.handed_over())
        await asyncio.sleep(0.01)
        assert not flush.done()  # the producer has not taken them yet: a flush now would miss them
        producer.gate.set()  # type: ignore[union-attr]
        await flush

        # The three writes queued together: partition 0's five records fill batches of two in
        # their write order, whatever the writes in between on other partitions.
        assert producer.sent == [
            (0, [(b'"alice"', b"1"), (b'"bob"', b"1")]),
            (0, [(b'"carol"', b"1"), (b'"alice"', b"2")]),
            (0, [(b'"bob"', None)]),
            (1, [(b'"dave"', b"1")]),
        ]
        assert stored(table, 0, "bob") is None and stored(table, 0, "alice") == 2

    asyncio.run(scenario())


def test_a_flush_waits_only_for_the_writes_before_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        producer = FakeProducer(gate=asyncio.Event(), stuck={1})
        writer, _ = new_writer(producer, tmp_path)
        writer.write(0, {"alice": 1})
        flush = asyncio.ensure_future(writer.handed_over())
        await asyncio.sleep(0)
        writer.write(1, {"bob": 1})  # folded while the commit waits: the next commit's
        producer.gate.set()  # type: ignore[union-attr]

        await asyncio.wait_for(flush, 5)  # though bob's batch is never handed over

        assert producer.sent == [(0, [(b'"alice"', b"1")])]
        with pytest.raises(asyncio.TimeoutError):  # the next flush covers bob's
            await asyncio.wait_for(writer.handed_over(), 0.05)

    asyncio.run(scenario())


def test_the_persisted_offset_follows_each_acknowledged_batch(tmp_path: Path) -> None:
    async def scenario() -> None:
        producer = FakeProducer(capacity=2)
        writer, table = new_writer(producer, tmp_path)
        writer.write(0, {"alice": 1, "bob": 1, "carol": 1})
        writer.write(3, {"dave": 1})
        await writer.handed_over()
        assert persisted(table) == {}  # nothing acknowledged yet

        producer.ack()
        await asyncio.sleep(0)

        assert persisted(table) == {0: 2, 3: 0}  # the last record of each partition's batches

    asyncio.run(scenario())


def test_a_batch_that_cannot_be_sent_fails_the_commit_and_every_later_write(tmp_path: Path) -> None:
    async def scenario() -> None:
        producer = FakeProducer(fail=ConnectionError("broker gone"))
        writer, _ = new_writer(producer, tmp_path)
        writer.write(0, {"alice": 1})

        with pytest.raises(RuntimeError, match="could not be written"):
            await writer.handed_over()
        with pytest.raises(RuntimeError, match="cannot be written"):
            writer.write(0, {"bob": 1})

    asyncio.run(scenario())


def test_a_batch_the_broker_refused_fails_the_commit(tmp_path: Path) -> None:
    async def scenario() -> None:
        producer = FakeProducer()
        writer, table = new_writer(producer, tmp_path)
        writer.write(0, {"alice": 1})
        await writer.handed_over()
        producer.acks[0][0].set_exception(ConnectionError("not enough replicas"))
        await asyncio.sleep(0)

        with pytest.raises(RuntimeError, match="could not be written"):
            writer.raise_failure()
        assert persisted(table) == {}

    asyncio.run(scenario())


def test_table_bytes_are_fausts_bytes_without_its_registry(tmp_path: Path) -> None:
    store = new_table(tmp_path).data
    direct = TableBytes.of(store)

    assert direct.direct  # orjson's calls, not Faust's registry
    value = {"history": [["i9", 1700000000.25, "purchase"]], "dedup": ["e1", "é"], "event_count": 7}
    for key in ("alice", "ü-1", "\x00pending-popularity:0"):
        assert direct.encode_key(key) == store._encode_key(key)
    assert direct.encode_value(value) == store._encode_value(value)
    assert direct.decode_value(store._encode_value(value)) == store._decode_value(store._encode_value(value))


def test_table_bytes_fall_back_to_faust_where_they_would_differ() -> None:
    store = ReprStore()

    codec = TableBytes.of(store)

    assert not codec.direct
    assert codec.encode_value == store._encode_value and codec.encode_key == store._encode_key
