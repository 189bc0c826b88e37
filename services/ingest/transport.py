"""Faust's Kafka consumer, tuned for ingest: a short fetch wait, runs of records, no tasks per message.

Seven changes to faust-streaming's aiokafka driver and app, measured on the ingest benchmark
(``docs/benchmarks.md``, figures 1, 2 and 8):

- **Runs of records.** Faust's cost is per message (stream plumbing, acks, offset tracking,
  sensors: an empty agent reads about 7,500 messages/s here). For the topics an app names in
  ``IngestApp.run_topics``, :meth:`EagerConsumer.getmany` hands each fetched run of one
  partition's records to the stream as one :class:`RecordRun` message of aiokafka's records (no
  Faust message per record), so that cost is paid per fetch, not per event. An acknowledged run
  counts for every offset it covers, so offsets are committed exactly as if each record had been
  a message of its own: only once the agent finished the whole run.
- **A hook before every commit.** :meth:`EagerConsumer.commit` awaits ``IngestApp.before_commit``
  first, so state an agent buffers across runs (ingest's popularity counts) is sent before the
  offsets that cover it are committed (Faust flushes the producer before it commits).
- **Fetch wait.** Faust hard-codes a 1.5 s fetch wait. Tansu (the embedded broker) answers a fetch
  over several partitions only when that wait is over, even if data arrived meanwhile, so every
  hop could stall 1.5 s. ``IngestApp.fetch_wait_ms`` (``STREAMREC_INGEST_BATCH_WAIT_MS``) sets it:
  it is also the span of a run at a steady rate.
- **Eager delivery.** For every message, Faust's fetch loop races "hand the message to its
  stream" against "flow suspended for a rebalance" with ``Service.wait_first``, which creates four
  tasks and an ``asyncio.wait``; that was half the CPU of a worker that does nothing else. Handing
  a message over almost never has to wait (only when the stream's buffer is full), so
  :meth:`EagerConsumer.wait_first` first runs the coroutine up to its first suspension, like
  Python 3.12's eager tasks; only if it does suspend does the race (and its tasks) happen, with
  exactly Faust's semantics.
- **No loop turns per produced message.** Faust awaits ``App.maybe_start_producer`` before every
  message it produces, behind mode's ``stampede``, which yields to the loop three times per call:
  :meth:`IngestApp.maybe_start_producer` returns a running producer at once, so the messages a
  run sends (dead letters, re-keyed events, features) reach aiokafka together.
- **Table writes in bulk.** ``user_state`` and ``item_popularity`` are written by a
  ``ChangelogWriter`` each (``changelog_writer.py``), which hands aiokafka a record batch per
  partition; :class:`IngestProducer` waits for those batches before every flush, so that the
  flush before a commit covers them.
- **No Monitor sensor.** Faust's Monitor counts and times every message, table read and write,
  for its web pages only: :meth:`IngestApp.on_init_dependencies` leaves it out unless they are on.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, ConsumerMessage, Message
from mode.services import WaitResults

from streamrec.ingest.changelog_writer import ChangelogWriter
from streamrec.shared.logs import get_logger

# Faust's services log "Starting…"/"Stopping…" through their class's logger; our subclasses keep
# them under "faust" so that configure_logging's level for Faust applies to them too.
faust_log = get_logger("faust.ingest")


def start_eagerly(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run ``coro`` until it first suspends: ``(True, result)`` if it finished, else ``(False, task)``.

    The task finishes the coroutine exactly as if it had been awaited from the start: it waits for
    whatever the coroutine was waiting on and resumes it, forwarding errors and cancellation.
    Exceptions raised before the first suspension propagate to the caller.
    """
    try:
        awaiting = coro.send(None)
    except StopIteration as finished:
        return True, finished.value
    task = asyncio.ensure_future(_resume(coro, awaiting))
    # A task cancelled before its first step never runs _resume's body, so nothing would throw
    # into the coroutine: close it then (a no-op once it finished), so its cleanup still runs.
    task.add_done_callback(lambda _: coro.close())
    return False, task


async def _resume(coro: Coroutine[Any, Any, Any], awaiting: Any) -> Any:
    # What asyncio.Task does for a coroutine: a yielded future is waited on, a bare yield (None)
    # gives the loop one turn; then the coroutine is resumed (it reads the future's result
    # itself), or the error, including cancellation, is thrown into it.
    while True:
        if awaiting is not None:
            awaiting._asyncio_future_blocking = False  # as Task does: the future is ours to await now
        try:
            await (asyncio.sleep(0) if awaiting is None else awaiting)
        except BaseException as error:
            try:
                awaiting = coro.throw(error)
            except StopIteration as finished:
                return finished.value
        else:
            try:
                awaiting = coro.send(None)
            except StopIteration as finished:
                return finished.value


class RecordRun(ConsumerMessage):
    """Consecutive records of one partition, fetched together and delivered as one Faust message.

    ``value`` is the list of the records as aiokafka fetched them (``ConsumerRecord``: key, value,
    topic, partition, offset; ``timestamp`` in milliseconds), ``offset`` the last one's offset. The
    run covers every offset from ``first_offset`` to ``offset``, gaps in the partition included
    (compaction, transaction markers), so that acknowledging it leaves no hole for the commit to
    wait on.
    """

    __slots__ = ("first_offset",)

    def __init__(self, records: list[Any], first_offset: int, tp: TP, generation_id: int) -> None:
        last = records[-1]
        super().__init__(
            last.topic,
            last.partition,
            last.offset,
            None if last.timestamp is None else last.timestamp / 1000.0,  # Faust's are in seconds
            last.timestamp_type,
            None,  # headers
            None,  # key: a run's records may have different keys
            records,
            None,  # checksum
            sum(record.serialized_key_size or 0 for record in records),
            sum(record.serialized_value_size or 0 for record in records),
            tp,
            generation_id=generation_id,
        )
        self.first_offset = first_offset


class EagerConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with a short fetch wait, runs of records and eager delivery."""

    logger = faust_log

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._runs: dict[TP, deque[RecordRun]] = {}  # delivered, not yet counted as acknowledged

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        """Faust's fetch, with the records of ``run_topics`` handed over as one run per partition.

        Faust's own loop (``Consumer.getmany``) makes a message of every record, asks for its
        partition's high-water mark and takes the partitions round-robin, record by record: a
        tenth of a worker's time at full speed. Here its checks are made once per partition's
        records instead; records of other topics go out one message each, as in Faust.
        """
        records, active_partitions = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            # As Faust does: a paused flow (a rebalance) seeks back to the committed offsets, so
            # what was fetched is fetched again.
            try:
                await self.perform_seek()
            except Exception as exc:
                self.log.warning(f"exception performing seek when flow not active {exc}")
            return
        run_topics: frozenset[str] = self.app.run_topics
        for tp, fetched in records.items():
            if not fetched:
                continue
            if (
                active_partitions is not None
                and tp not in active_partitions
                and tp not in self._buffered_partitions
            ):
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            if tp.topic in run_topics:
                if not self._delivering(generation_id):
                    return
                read = self._read_offset[tp]
                first = fetched[0].offset if read is None else min(fetched[0].offset, read + 1)
                run = RecordRun(fetched, first, tp, generation_id)
                self._runs.setdefault(tp, deque()).append(run)
                yield tp, run
                continue
            for record in fetched:
                if not self._delivering(generation_id):
                    return
                yield tp, self._to_message(tp, record)

    def _delivering(self, generation_id: int) -> bool:
        """False once a rebalance or a paused flow stops this fetch's delivery (Faust seeks back to
        the committed offsets then, so the rest is fetched again)."""
        return self.flow_active and self.app.consumer_generation_id == generation_id

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit for ``tp``, once the acknowledged runs' offsets count as acknowledged.

        Acknowledging a message marks only its own offset, a run's last; Faust's compiled stream
        iterator does that inline, so ``Consumer.ack`` cannot be extended. Here, before Faust looks
        for the highest gap-free acknowledged offset, every acknowledged run at the head of the
        partition's queue adds the offsets it covers.
        """
        runs = self._runs.get(tp)
        if runs:
            acked, index = self._acked[tp], self._acked_index[tp]
            committed = self._committed_offset[tp]
            while runs and runs[0].acked:
                run = runs.popleft()
                start = run.first_offset if committed is None else max(run.first_offset, committed)
                covered = [offset for offset in range(start, run.offset) if offset not in index]
                index.update(covered)
                acked.extend(covered)
        return super()._new_offset(tp)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Commit what is done on the revoked partitions, then forget their runs (the next owner
        reads the rest again from the commit).

        Faust forgets the acknowledged offsets of revoked partitions before its rebalance handler
        commits, so the work finished since the last periodic commit was never committed. With
        eager rebalancing every partition is revoked, also those that stay with this worker: one
        that then got no new event stayed uncommitted, and `streamrec train --once` waited for
        ingest forever (seen on Apache Kafka, a second worker joining while the first had just
        taken a backlog). Committing here is what Faust's handler itself does a moment later.
        """
        if self.assignment():
            await self.commit()
        for tp in revoked:
            self._runs.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # Runs of ``run_topics`` cover the offsets between them themselves (``RecordRun.first_offset``).
        if tp.topic not in self.app.run_topics:
            await super()._add_gap(tp, offset_from, offset_to)

    async def commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        """Run the app's ``before_commit`` hook, then commit (Faust flushes the producer first)."""
        await self.app.before_commit()
        return await super().commit(topics, start_new_transaction=start_new_transaction)

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ShortFetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def on_buffer_full(self, tp: Any) -> None:
        """Keep fetching a partition whose stream buffer is under pressure (Faust would stop).

        Faust takes such a partition out of the fetcher and puts it back from a callback of the
        stream's queue once the buffer drains. This override was meant to stop a stall seen after a
        kill -9 restart with a backlog (one input partition not fetched again for minutes while the
        worker sat idle), but that stall has recurred with it in place (the kill -9 fault test, about
        one run in ten), so the stall's cause is still open. Without the pause, back-pressure still
        holds: a full queue blocks the hand-over of fetched messages, and aiokafka prefetches at
        most one response per partition.
        """

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        """``Service.wait_first``, but a first coroutine that finishes without waiting costs no task."""
        first, *others = coros
        if timeout is not None or not asyncio.iscoroutine(first):
            return await super().wait_first(*coros, timeout=timeout)
        finished, outcome = start_eagerly(first)
        if not finished:
            return await super().wait_first(outcome, *others)
        for other in others:  # the race's other side ("flow suspended") never started
            if asyncio.iscoroutine(other):
                other.close()
        if self._stopped.is_set() or self._crashed.is_set():
            return WaitResults([], [], True)
        return WaitResults([first], [outcome], False)


class _ShortFetchWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    logger = faust_log

    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.app.fetch_wait_ms  # read by AIOKafkaConsumer.start()
        # Without a minimum the broker answers as soon as any record is there, so at a steady rate
        # runs are a few events each (one FeatureBatch and one changelog record batch per partition for
        # each): the wait, not the first record, should end a fetch. Under a backlog this much is
        # there at once, so catching up is not slowed.
        consumer._fetch_min_bytes = FETCH_MIN_BYTES
        return consumer


class IngestProducer(faust_aiokafka.Producer):
    """Faust's producer; its flush (before every offset commit) first waits until the tables'
    changelog writers handed every batch written so far to aiokafka (``changelog_writer.py``)."""

    async def flush(self) -> None:
        """Hand over the changelog writers' batches, then wait for the broker to have everything."""
        writers = self.app.changelog_writers
        for writer in writers:
            await writer.handed_over()
        await super().flush()
        for writer in writers:
            writer.raise_failure()


class _IngestTransport(faust_aiokafka.Transport):
    Consumer = EagerConsumer
    Producer = IngestProducer


PRODUCER_BUFFER_MESSAGES = 20_000
FETCH_MIN_BYTES = 1024 * 1024


async def _nothing_to_send() -> None:
    return None


class IngestApp(faust.App):
    """A Faust app on the tuned transport.

    Its consumer waits at most ``fetch_wait_ms`` per fetch, delivers the topics in ``run_topics``
    as :class:`RecordRun` messages, and awaits ``before_commit`` before every offset commit. An
    agent that fails stops the worker (:meth:`_on_agent_error`).
    """

    logger = faust_log
    fetch_wait_ms: int = 50
    run_topics: frozenset[str] = frozenset()
    before_commit: Callable[[], Awaitable[None]] = staticmethod(_nothing_to_send)
    changelog_writers: tuple[ChangelogWriter, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._producer_start_lock = asyncio.Lock()

    def _new_transport(self) -> faust_aiokafka.Transport:
        return _IngestTransport(self.conf.broker_consumer, self)

    def active_partitions(self, topic: str) -> set[int]:
        """The partitions of ``topic`` assigned to this worker as active (not standby)."""
        return {tp.partition for tp in self.assignor.assigned_actives() if tp.topic == topic}

    async def _on_agent_error(self, agent: Any, exc: BaseException) -> None:
        """An agent failed (a bug): stop the whole worker, so that its restart reads the input again
        from the last commit. Faust's default commits and restarts just the agent, which goes on
        with the next message: the one that failed would count as done (its stream acknowledged
        it while unwinding)."""
        faust_log.critical(
            "an agent failed: stopping the worker", extra={"agent": str(agent.name), "error": repr(exc)}
        )
        await self.crash(exc)

    async def maybe_start_producer(self) -> Any:
        """Faust's, without three turns of the event loop per message once the producer runs.

        Every message Faust produces (each table changelog record included) first awaits this, and
        Faust wraps it in mode's ``stampede``, which awaits ``asyncio.sleep(0)`` three times per
        call. So a table write of a few hundred states trickled into aiokafka over tens of
        milliseconds, its 5 ms linger closed a record batch every few dozen records (the embedded
        broker's cost grows with record batches), and the loop spun three times per record. The
        stampede's purpose, one start for concurrent first callers, is kept by a lock.
        """
        if self.in_transaction:
            return self.consumer.transactions
        producer = self.producer
        if not producer.started:
            async with self._producer_start_lock:
                await producer.maybe_start()
        return producer

    async def kafka_producer(self) -> aiokafka.AIOKafkaProducer:
        """aiokafka's producer under Faust's, started (the changelog writers send through it)."""
        producer = await self.maybe_start_producer()
        return producer._ensure_producer()

    def on_init_dependencies(self) -> Any:
        """Faust's, but its Monitor sensor left out unless Faust's web pages (which show it) are on.

        The Monitor counts and times every message in and out, every table read and write: about
        4% of a worker draining a backlog (a py-spy profile over 200,000 events), for counters
        nothing else reads (ingest's metrics are its own, ``metrics.py``).
        """
        dependencies = super().on_init_dependencies()
        if not self.conf.web_enabled:
            self.sensors.remove(self.monitor)
        return dependencies

    def _new_producer(self) -> Any:
        producer = super()._new_producer()
        # Faust flushes its buffer of table changelog messages (and warns) whenever it holds more
        # than 100; one run writes a changelog message per user it touched, often thousands.
        producer.buffer.max_messages = PRODUCER_BUFFER_MESSAGES
        return producer
