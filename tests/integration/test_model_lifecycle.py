"""Model lifecycle on the running stack: retrain + promote, the quality gate, refused models, rollback."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pandas as pd
import pytest
import redis
from confluent_kafka import Producer

from streamrec.shared.messages import ModelAnnouncement
from streamrec.shared.model_contract import MANIFEST_FILE, MODEL_FILE
from streamrec.shared.registry import PROMOTED, REJECTED, ROLLED_BACK, ModelRegistry, new_version
from streamrec.trainer.cycle import publish_candidate
from streamrec.trainer.dataset import build_dataset
from streamrec.trainer.gate import judge

from support import LiveStack, TrainedStack, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.changes_model]


def synthetic_users(trained_stack: TrainedStack) -> list[str]:
    return sorted(trained_stack.events.user_id.unique())


def all_lists_from(live: LiveStack, users: list[str], version: str) -> bool:
    lists = [live.cached(user) for user in users]
    return all(cached is not None and cached.model_version == version for cached in lists)


@contextmanager
def watch_for_gaps(live: LiveStack, users: list[str]) -> Iterator[list[str]]:
    """Poll every user's Redis key throughout the block; yields the list of users seen without one."""
    client = redis.Redis.from_url(live.settings.redis_url or "")
    keys = [live.keys.recs(user) for user in users]
    missing: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            missing.extend(user for user, raw in zip(users, client.mget(keys), strict=True) if raw is None)
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield missing
    finally:
        stop.set()
        poller.join(5)
        client.close()


def test_retraining_with_more_data_promotes_and_moves_every_list_without_a_gap(
    trained_stack: TrainedStack,
) -> None:
    live = trained_stack.live
    registry = ModelRegistry(live.settings.model_dir)
    users = synthetic_users(trained_stack)
    served = registry.promoted_version()
    assert served is not None
    wait_for(lambda: all_lists_from(live, users, served), 120, f"every user served by {served}")

    # Every user walks two more steps along their cluster's item chain (items k, k+4, … here),
    # later than everything so far; then the trainer runs its next cycle.
    last = trained_stack.events.sort_values("timestamp").groupby("user_id").tail(1)
    more = pd.concat(
        last.assign(
            item_id=[f"i{(int(item[1:]) + 4 * step) % 60}" for item in last.item_id],
            timestamp=last.timestamp + 10_000_000 + step,
        )
        for step in (1, 2)
    ).assign(row=lambda frame: range(len(frame)))
    live.stream_in(more, "more")

    with watch_for_gaps(live, users) as missing:
        # A generous tolerance: models of ~1,000 synthetic events differ by noise; the gate's
        # strictness is tested with a model of shuffled data below.
        result = live.cli("train", "--once", env={"STREAMREC_GATE_TOLERANCE": "0.05"})
        assert result.returncode == 0, result.stderr[-3000:]
        new = registry.promoted_version()
        assert new is not None and new != served and f"{new} published" in result.stdout
        assert "promoted" in result.stdout
        wait_for(lambda: all_lists_from(live, users, new), 120, f"every user's list to move to {new}")
    assert missing == [], f"users without a list during the swap: {sorted(set(missing))[:10]}"
    manifest = registry.manifest(new)
    assert manifest.status == PROMOTED and manifest.parent_version == served
    assert "not worse than" in manifest.status_reason


def test_the_gate_rejects_a_worse_candidate_and_nothing_changes(trained_stack: TrainedStack) -> None:
    live = trained_stack.live
    registry = ModelRegistry(live.settings.model_dir)
    served = registry.promoted_version()
    events = trained_stack.events
    # The same events with their items shuffled between them: a model of noise.
    shuffled = events.assign(item_id=events.item_id.sample(frac=1.0, random_state=0).to_numpy())
    settings = live.settings.model_copy(update={"train_threads": 1})
    candidate, _ = publish_candidate(shuffled, settings, {})
    decision = judge(registry, candidate.version, build_dataset(events, settings.max_seq_len), settings)
    assert not decision.promote, decision.reason
    registry.reject(candidate.version, decision.reason)
    assert registry.manifest(candidate.version).status == REJECTED
    assert registry.promoted_version() == served
    assert live.redis.get(live.keys.model).decode() == served


@pytest.mark.parametrize("damage", ["corrupted file", "truncated file", "wrong signature"])
def test_a_damaged_model_is_refused_and_the_old_one_keeps_serving(
    trained_stack: TrainedStack, damage: str
) -> None:
    live = trained_stack.live
    registry = ModelRegistry(live.settings.model_dir)
    served = registry.promoted_version()
    assert served is not None
    manifest = registry.manifest(served)
    version = new_version()
    shutil.copytree(registry.path(served), registry.path(version))
    damaged = replace(manifest, version=version)
    if damage == "corrupted file":
        model_file = registry.path(version) / MODEL_FILE
        data = bytearray(model_file.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one byte changed after the manifest was written
        model_file.write_bytes(bytes(data))
    elif damage == "truncated file":
        model_file = registry.path(version) / MODEL_FILE
        model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])  # a torn copy
    else:
        damaged = replace(damaged, max_seq_len=manifest.max_seq_len + 1)  # not what the graph takes
    (registry.path(version) / MANIFEST_FILE).write_bytes(damaged.to_json())

    # Announce it straight to the scorers, as a buggy or hostile trainer could.
    producer = Producer({"bootstrap.servers": live.settings.kafka_bootstrap})
    producer.produce(live.settings.topic_models, ModelAnnouncement(version, time.time()).to_json())
    assert producer.flush(30) == 0
    scorer_log = live.stack.run_dir / "scorer.log"
    wait_for(
        lambda: any(
            "model refused" in line and version in line for line in scorer_log.read_text().splitlines()
        ),
        60,
        f"the scorer to refuse the {damage} model",
    )
    assert live.redis.get(live.keys.model).decode() == served
    user = synthetic_users(trained_stack)[0]
    assert live.cached(user).model_version == served  # type: ignore[union-attr]


def test_rollback_restores_the_previous_version_in_the_scorer_and_redis(trained_stack: TrainedStack) -> None:
    live = trained_stack.live
    registry = ModelRegistry(live.settings.model_dir)
    users = synthetic_users(trained_stack)
    current, previous = registry.promoted_version(), registry.rollback_target()
    assert current is not None and previous is not None, "the earlier tests promoted two versions"

    with watch_for_gaps(live, users) as missing:
        result = live.cli("models", "rollback", "--reason", "test rollback")
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"rolled back from {current} to {previous}" in result.stdout
        wait_for(lambda: all_lists_from(live, users, previous), 120, f"every list back on {previous}")
    assert missing == []
    assert registry.promoted_version() == previous
    assert registry.manifest(current).status == ROLLED_BACK
    assert live.redis.get(live.keys.model).decode() == previous

    listed = live.cli("models", "list")
    assert listed.returncode == 0
    assert f"* {previous}" in listed.stdout and "rolled-back" in listed.stdout
