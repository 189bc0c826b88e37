"""A table's writes in bulk: each key encoded once, put in the store, and one record batch per partition.

Faust's ``table[key] = value`` sends each write's changelog record on its own: the key and value
encoded once for the store and again for the record, a future, a trip through Faust's producer
buffer and aiokafka's ``send``, and, once the broker acknowledged it, a callback that writes the
changelog offset into RocksDB. At a steady 1,000 events/s that per-record path was about a fifth
of ingest's CPU (a user state and two thirds of an item's popularity per event; py-spy profile).

:class:`ChangelogWriter` writes a table the same way, in bulk. Each key's bytes are encoded once
(as Faust encodes them, without its serializer registry: ``table_codec.TableBytes``), put in the
partition's RocksDB database with one write batch, and appended to a record batch of its
partition; the store's persisted changelog offset follows each acknowledged batch (what Faust's
callback does per record). The records are the ones Faust writes, so recovery and compaction read
them as ever. Reads and writes go to the partition's database directly, as Faust's store does once
it has found the database from the current event: without a stand-in event in a context variable
per access, and without Faust's in-memory key index (a cache of which partition holds a key, which
Faust's own reads fall back from to every partition's database).

Order and the commit:

- :meth:`ChangelogWriter.write` is synchronous (the commit hook's step 2 must not await,
  ``commit.py``). It queues the batches; one task per writer hands them to the producer in the
  order they were written, so a key's records reach the changelog in the order of its writes.
- Faust flushes the producer before every offset commit, and the app's producer first awaits
  :meth:`ChangelogWriter.handed_over` (``transport.IngestProducer``): the flush then covers every
  batch written before it. It waits for those only: the runs folded meanwhile keep writing, and a
  flush that waited until the queue was empty waited as long as the load lasted (no offset was
  committed during a 30-second drain on Apache Kafka, and the uncommitted runs' records stayed in
  memory, 300,000 of them, found by the memory figure).
- Every write of a table goes through its writer, deletes included: a record sent by Faust's own
  path could overtake a queued batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from faust.types import TP
from rocksdict import WriteBatch

from streamrec.ingest.table_codec import TableBytes
from streamrec.shared.logs import get_logger

log = get_logger(__name__)

Records = list[tuple[bytes, bytes | None]]  # (key, value) as the changelog holds them; None deletes


class ChangelogWriter:
    """Writes one table's values to its store and its changelog, a record batch per partition."""

    def __init__(self, table: faust.Table, producer: Callable[[], Awaitable[AIOKafkaProducer]]) -> None:
        """``producer`` returns the app's aiokafka producer, started (awaited when a batch is sent)."""
        self.table = table
        self.store = table.data  # Faust's RocksDB store: a database per partition
        self.bytes = TableBytes.of(self.store)
        self._producer = producer
        self._queue: deque[tuple[int, Records]] = deque()
        self._sender: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._written = 0  # writes queued so far (a partition's records each)
        self._handed = 0  # of them, handed to the producer
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()  # (writes to wait for, waiter)

    @property
    def topic(self) -> str:
        """The table's changelog topic."""
        return self.table.changelog_topic.get_topic_name()

    def read(self, partition: int, key: str) -> Any | None:
        """The stored value of ``key`` on ``partition``, or None: one lookup in that partition's
        database (``table.get`` makes two, in every database unless the key was seen lately)."""
        raw = self._database(partition).get(self.bytes.encode_key(key))
        return None if raw is None else self.bytes.decode_value(raw)

    def write(self, partition: int, values: Mapping[str, Any]) -> None:
        """Write ``values`` (a value of None deletes its key) to the store and, queued, to the
        changelog partition ``partition``, in this order."""
        if self._failure is not None:
            raise RuntimeError(f"the {self.topic} changelog cannot be written") from self._failure
        if not values:
            return
        encode_key, encode_value = self.bytes.encode_key, self.bytes.encode_value
        records: Records = []
        batch = WriteBatch(raw_mode=True)  # as Faust opens its databases: keys and values as bytes
        for key, value in values.items():
            key_bytes = encode_key(key)
            if value is None:
                batch.delete(key_bytes)
                records.append((key_bytes, None))
            else:
                value_bytes = encode_value(value)
                batch.put(key_bytes, value_bytes)
                records.append((key_bytes, value_bytes))
        self._database(partition).write(batch)
        self._queue.append((partition, records))
        self._written += 1
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send_queued())

    def _database(self, partition: int) -> Any:
        # Looked up at every access, not kept: Faust closes a revoked partition's database, and
        # opens it again (as here) at its first use after it is assigned again.
        return self.store._db_for_partition(partition)

    async def handed_over(self) -> None:
        """Wait until every batch written so far is with the producer (whose flush then covers it),
        not for those written meanwhile; raises if one could not be."""
        if self._handed < self._written and self._failure is None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append((self._written, waiter))
            await waiter
        self.raise_failure()

    def raise_failure(self) -> None:
        """Raise if a batch could not be handed over or delivered: the store holds records the
        changelog lacks, and no offset after them may be committed."""
        if self._failure is not None:
            raise RuntimeError(f"the {self.topic} changelog could not be written") from self._failure

    async def _send_queued(self) -> None:
        """Hand the queued records to the producer, in order: all that is queued, a partition's
        records together (as few record batches as they fit)."""
        try:
            while self._queue:
                # aiokafka takes a partition's next record batch only once the one before left for
                # the broker, a round trip later: a batch per write queued the writes of a 20,000-item
                # popularity message (a hundred slices) for seconds, and the commit behind them.
                taken = len(self._queue)
                by_partition: dict[int, Records] = {}
                for _ in range(taken):
                    partition, records = self._queue.popleft()
                    by_partition.setdefault(partition, []).extend(records)
                for partition, records in by_partition.items():
                    await self._send(partition, records)
                self._handed += taken
                self._wake_waiters()
        except Exception as exc:
            self._failed(exc)
        except asyncio.CancelledError as exc:  # the worker stops: no flush may wait for the rest
            self._failed(exc)
            raise

    def _wake_waiters(self) -> None:
        # Waiters queue up in the order of their targets (writes only grow): wake from the head.
        while self._waiters and (self._failure is not None or self._waiters[0][0] <= self._handed):
            _, waiter = self._waiters.popleft()
            if not waiter.done():  # its flush may have been cancelled
                waiter.set_result(None)

    def _failed(self, exc: BaseException) -> None:
        # The records are in the store but maybe not in the changelog: nothing written after them
        # may be committed. The commit (``handed_over``, ``raise_failure``) and every later write raise.
        if self._failure is None:
            self._failure = exc
            log.error("changelog batch not written", extra={"topic": self.topic, "error": repr(exc)})
        self._wake_waiters()

    async def _send(self, partition: int, records: Records) -> None:
        producer = await self._producer()
        batch = producer.create_batch()
        count = 0
        for key, value in records:
            if batch.append(timestamp=None, key=key, value=value, headers=[]) is None:
                await self._submit(producer, batch, partition, count)  # full: the rest in the next
                batch, count = producer.create_batch(), 0
                if batch.append(timestamp=None, key=key, value=value, headers=[]) is None:
                    raise ValueError(f"a {self.topic} record of {len(value or b'')} bytes fits no batch")
            count += 1
        await self._submit(producer, batch, partition, count)

    async def _submit(self, producer: AIOKafkaProducer, batch: Any, partition: int, count: int) -> None:
        batch.close()  # nothing else may join it (aiokafka would add send()'s records to an open one)
        delivered = await producer.send_batch(batch, self.topic, partition=partition)
        tp = TP(self.topic, partition)

        def persisted(future: asyncio.Future[Any]) -> None:
            # As Faust's per-record callback: the store holds the changelog up to this offset.
            if future.cancelled():
                self._failed(asyncio.CancelledError())
            elif (exc := future.exception()) is not None:
                self._failed(exc)
            else:
                self.store.set_persisted_offset(tp, future.result().offset + count - 1)

        delivered.add_done_callback(persisted)
