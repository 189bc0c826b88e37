"""Helpers shared by the tests: waiting for conditions, and handles on a running stack."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import redis

from streamrec.publisher import Publisher, dataset_events, publish_stream
from streamrec.shared.contracts import CachedList, RedisKeys
from streamrec.shared.settings import Settings
from streamrec.stack import Stack
from streamrec.topics import MessageCounter

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.25) -> object:
    """Poll until ``condition()`` is truthy; fail the test with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class LiveStack:
    """The running stack plus handles the tests use."""

    stack: Stack
    settings: Settings
    redis: redis.Redis
    keys: RedisKeys

    def env(self) -> dict[str, str]:
        """Environment for a `streamrec` subprocess talking to this stack."""
        return {**os.environ, **self.settings.as_env()}

    def cli(
        self, *args: str, timeout: float = 300, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `streamrec ARGS…` against this stack (``env``: extra variables)."""
        return subprocess.run(
            [sys.executable, "-m", "streamrec", *args],
            env={**self.env(), **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def cached(self, user_id: str) -> CachedList | None:
        """The user's list as the scorer wrote it, or None."""
        raw = self.redis.get(self.keys.recs(user_id))
        return None if raw is None else CachedList.decode(raw)

    def stream_in(self, frame: pd.DataFrame, source: str, timeout: float = 180) -> int:
        """Publish an interaction frame (time order, event ids ``source:row``) and wait until
        ingest accepted every event; returns how many were sent."""
        counter = self.feature_updates()
        try:
            before = counter.update()
            with Publisher(settings=self.settings) as publisher:
                sent = publish_stream(publisher, dataset_events(frame, source), len(frame), progress=False)
            wait_for(
                lambda: counter.update() >= before + sent, timeout, f"ingest to accept {sent} {source} events"
            )
        finally:
            counter.close()
        return sent

    def feature_updates(self) -> MessageCounter:
        """A counter of user-features messages: ingest sends one per accepted event."""
        return MessageCounter(self.settings.kafka_bootstrap or "", self.settings.topic_user_features)


@dataclass
class TrainedStack:
    """The live stack after a synthetic stream went through it and one model was trained."""

    live: LiveStack
    events: pd.DataFrame
    version: str


@contextmanager
def only_the_strategies() -> Iterator[None]:
    """Let Hypothesis generate from the strategies alone, without the literals it harvests from
    the project's loaded modules (wrap the call of a ``@given`` function).

    Those literals would make the generated data change with any edit anywhere in the code base, and with
    the set of test modules a session happened to import; without them it is the same on every
    run. (Hypothesis has no setting for this: the hook is internal, hence the pinned version.)
    """
    from hypothesis.internal.conjecture import providers

    original = providers.HypothesisProvider.__dict__["_local_constants"]
    providers.HypothesisProvider._local_constants = property(lambda _self: providers.Constants())  # type: ignore[assignment]
    providers.CONSTANTS_CACHE.cache.clear()  # pools computed with the harvested literals
    try:
        yield
    finally:
        providers.HypothesisProvider._local_constants = original  # type: ignore[assignment]
        providers.CONSTANTS_CACHE.cache.clear()
