"""The event-loop watch: a blocked loop is measured and logged; an idle one is not."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from streamrec.shared.loop_lag import watch_event_loop


async def _watch_while(block_seconds: float) -> None:
    watch = asyncio.create_task(watch_event_loop(interval=0.01, log_over_seconds=0.1))
    await asyncio.sleep(0.05)
    time.sleep(block_seconds)  # a step that never yields: nothing else on the loop can run
    await asyncio.sleep(0.05)
    watch.cancel()


def test_a_blocked_loop_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streamrec.shared.loop_lag"):
        asyncio.run(_watch_while(0.3))
    [record] = [r for r in caplog.records if r.getMessage() == "event loop blocked"]
    assert record.blocked_ms >= 250  # type: ignore[attr-defined]


def test_an_idle_loop_is_not(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streamrec.shared.loop_lag"):
        asyncio.run(_watch_while(0.0))
    assert not [r for r in caplog.records if r.getMessage() == "event loop blocked"]
