"""Faust's Kafka consumer, tuned for ingest: a short fetch wait and no tasks for a message that fits.

Two changes to faust-streaming's aiokafka driver, both measured on the ingest benchmark
(``docs/benchmarks.md``, figure 1):

- **Fetch wait.** Faust hard-codes a 1.5 s fetch wait. Tansu (the embedded broker) answers a fetch
  over several partitions only when that wait is over, even if data arrived meanwhile, so every
  hop could stall 1.5 s. ``IngestApp.fetch_wait_ms`` (``STREAMREC_KAFKA_FETCH_WAIT_MS``) sets it.
- **Eager delivery.** For every message, Faust's fetch loop races "hand the message to its
  stream" against "flow suspended for a rebalance" with ``Service.wait_first``, which creates four
  tasks and an ``asyncio.wait``; that was half the CPU of a worker that does nothing else. Handing
  a message over almost never has to wait (only when the stream's buffer is full), so
  :meth:`EagerConsumer.wait_first` first runs the coroutine up to its first suspension, like
  Python 3.12's eager tasks; only if it does suspend does the race (and its tasks) happen, with
  exactly Faust's semantics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitResults

from ..shared.logs import get_logger

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


class EagerConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with a short fetch wait and eager message delivery."""

    logger = faust_log

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
        return consumer


class _IngestTransport(faust_aiokafka.Transport):
    Consumer = EagerConsumer


class IngestApp(faust.App):
    """A Faust app on the tuned transport; its consumer waits at most ``fetch_wait_ms`` per fetch."""

    logger = faust_log
    fetch_wait_ms: int = 50

    def _new_transport(self) -> faust_aiokafka.Transport:
        return _IngestTransport(self.conf.broker_consumer, self)
