"""Ingest's Faust consumer (services/ingest/transport.py): what it commits when partitions go."""

from __future__ import annotations

import asyncio
from collections import deque
from pathlib import Path

import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streamrec.ingest.app import configure_app
from streamrec.ingest.transport import EagerConsumer
from streamrec.shared.settings import Settings


def test_revoked_partitions_are_committed_before_their_finished_runs_are_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Faust forgets a revoked partition's acknowledged offsets before its rebalance handler commits:
    # the consumer must commit them first, while it still knows them (and its runs).
    kept, moved = TP("interactions", 0), TP("interactions", 1)
    consumer = EagerConsumer.__new__(EagerConsumer)  # no app, no Kafka: only the revoke order
    consumer._runs = {kept: deque(["run of partition 0"]), moved: deque(["run of partition 1"])}
    calls: list[tuple[str, object]] = []

    async def commit() -> bool:
        calls.append(("commit", sorted(consumer._runs)))
        return True

    async def faust_forgets(self: object, revoked: set[TP]) -> None:
        calls.append(("faust forgets", sorted(revoked)))

    monkeypatch.setattr(consumer, "assignment", lambda: {kept, moved})
    monkeypatch.setattr(consumer, "commit", commit)
    monkeypatch.setattr(faust_aiokafka.Consumer, "on_partitions_revoked", faust_forgets)

    asyncio.run(consumer.on_partitions_revoked({kept, moved}))  # eager rebalancing: all of them

    assert calls == [("commit", [kept, moved]), ("faust forgets", [kept, moved])]
    assert consumer._runs == {}


def test_nothing_is_committed_without_an_assignment(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = EagerConsumer.__new__(EagerConsumer)
    consumer._runs = {}
    committed: list[bool] = []

    async def commit() -> bool:
        committed.append(True)
        return True

    async def faust_forgets(self: object, revoked: set[TP]) -> None:
        return None

    monkeypatch.setattr(consumer, "assignment", set)
    monkeypatch.setattr(consumer, "commit", commit)
    monkeypatch.setattr(faust_aiokafka.Consumer, "on_partitions_revoked", faust_forgets)
    asyncio.run(consumer.on_partitions_revoked(set()))
    assert committed == []


@pytest.mark.parametrize("web_port", [0, 6067])
def test_the_monitor_sensor_is_left_out_unless_faust_web_is_on(web_port: int, tmp_path: Path) -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:9", data_dir=tmp_path, ingest_web_port=web_port)
    app = configure_app(settings)  # not started: no broker is reached
    app.on_init_dependencies()
    assert (app.monitor in set(app.sensors)) is (web_port > 0)
