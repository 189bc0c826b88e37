"""End to end on real servers: events in Kafka -> features -> model -> top-N in Redis."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, Producer

from streamrec.processes import free_port

from support import DATASETS, LiveStack, TrainedStack, wait_for

pytestmark = pytest.mark.integration


def test_every_user_gets_personal_recommendations_without_seen_items(trained_stack: TrainedStack) -> None:
    live, events = trained_stack.live, trained_stack.events
    users = sorted(events.user_id.unique())

    def all_served() -> bool:
        lists = [live.cached(u) for u in users]
        return all(c is not None and c.model_version == trained_stack.version for c in lists)

    wait_for(all_served, 120, "every user to get recommendations from the trained model")
    seen_by_user = events.groupby("user_id").item_id.agg(set)
    for user in users:
        cached = live.cached(user)
        assert cached is not None and cached.source == "personal"
        recommended = [item for item, _ in cached.items]
        assert len(recommended) == live.settings.top_n
        assert not set(recommended) & seen_by_user[user], f"user {user} was recommended an item they saw"
        scores = [score for _, score in cached.items]
        assert scores == sorted(scores, reverse=True)


def test_new_user_from_any_kafka_client_gets_recommendations(trained_stack: TrainedStack) -> None:
    live = trained_stack.live
    producer = Producer({"bootstrap.servers": live.settings.kafka_bootstrap})
    history = ["i1", "i5", "i9"]
    for n, item in enumerate(history):
        event = {
            "user_id": "brand-new",
            "item_id": item,
            "event_type": "click",
            "timestamp": 1_700_100_000 + n,
        }
        producer.produce(live.settings.topic_interactions, key=b"brand-new", value=orjson.dumps(event))
    assert producer.flush(30) == 0

    def served_after_all_events():
        cached = live.cached("brand-new")
        return cached if cached and cached.source == "personal" and cached.generated_at > started else None

    started = time.time() - 1
    cached = wait_for(served_after_all_events, 60, "recommendations for a brand-new user")
    wait_for(
        lambda: not {i for i, _ in live.cached("brand-new").items} & set(history),
        30,
        "the new user's list to exclude all three items they interacted with",
    )
    assert cached.model_version == trained_stack.version


def test_invalid_events_go_to_dead_letters_while_valid_ones_flow(trained_stack: TrainedStack) -> None:
    live = trained_stack.live
    topic = live.settings.topic_interactions
    producer = Producer({"bootstrap.servers": live.settings.kafka_bootstrap})
    marker = f"dlq-{time.time_ns()}"
    garbage = [
        b"not json at all " + marker.encode(),
        orjson.dumps({"user_id": marker, "event_type": "view"}),  # no item_id
        orjson.dumps({"user_id": marker, "item_id": "i1", "event_type": "view", "timestamp": -5}),
        orjson.dumps({"user_id": marker, "item_id": "i1", "event_type": "View!"}),
        b"\xff\xfe" + marker.encode(),
        orjson.dumps({"user_id": marker, "item_id": "x" * 70_000, "event_type": "view"}),
    ]
    for value in garbage:
        producer.produce(topic, key=marker.encode(), value=value)
    valid_user = f"{marker}-ok"
    for n in range(3):
        event = {"user_id": valid_user, "item_id": f"i{n + 2}", "event_type": "view"}
        producer.produce(topic, key=valid_user.encode(), value=orjson.dumps(event))
    assert producer.flush(30) == 0

    wait_for(lambda: live.cached(valid_user), 60, "valid events after garbage to be scored")

    consumer = Consumer(
        {
            "bootstrap.servers": live.settings.kafka_bootstrap,
            "group.id": f"test-{marker}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([live.settings.topic_dlq])
    letters: list[dict] = []
    deadline = time.monotonic() + 60
    while len(letters) < len(garbage) and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None or message.error():
            continue
        letter = orjson.loads(message.value())
        if (
            marker in letter["payload"]
        ):  # other tests' letters share the topic (the fuzz test's oversized ones too)
            letters.append(letter)
    consumer.close()
    assert len(letters) == len(garbage)
    reasons = sorted(letter["reason"] for letter in letters)
    assert reasons == sorted(
        ["not_json", "invalid_field", "bad_timestamp", "invalid_field", "not_utf8", "oversized"]
    )
    assert all(letter["detail"] and letter["source"]["topic"] == topic for letter in letters)


def test_cli_recommend_prints_the_documented_json(trained_stack: TrainedStack) -> None:
    live = trained_stack.live
    user = sorted(trained_stack.events.user_id.unique())[0]
    result = live.cli("recommend", user, "--n", "5", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    body = orjson.loads(result.stdout)
    assert set(body) == {"user_id", "items", "model_version", "generated_at", "source"}
    assert body["user_id"] == user and len(body["items"]) == 5
    assert set(body["items"][0]) == {"item_id", "score"}
    assert body["model_version"] == trained_stack.version and body["source"] == "personal"


def test_http_endpoint_serves_users_and_falls_back_for_unknown_ones(trained_stack: TrainedStack) -> None:
    live = trained_stack.live
    base = f"http://{live.settings.api_host}:{live.settings.api_port}"
    user = sorted(trained_stack.events.user_id.unique())[1]
    response = httpx.get(f"{base}/users/{user}/recommendations", params={"n": 7}, timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["source"] == "personal" and len(body["items"]) == 7

    wait_for(lambda: live.redis.exists(live.keys.popular), 30, "the popular-items fallback")
    unknown = httpx.get(f"{base}/users/nobody-ever/recommendations", timeout=10)
    assert unknown.status_code == 200 and unknown.json()["source"] == "fallback"
    assert httpx.get(f"{base}/users/{user}/recommendations", params={"n": 0}, timeout=10).status_code == 422
    assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200


def test_cli_errors_are_one_clear_line(live_stack: LiveStack, tmp_path: Path) -> None:
    bad = tmp_path / "events.jsonl"
    bad.write_text('{"user_id": 1, "item_id": 2, "event_type": "view"}\n{"user_id": 1}\n')
    result = live_stack.cli("publish", str(bad), timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("streamrec: error:") and "events.jsonl:2" in result.stderr

    without_redis = {k: v for k, v in live_stack.env().items() if k != "STREAMREC_REDIS_URL"}
    result = run_cli(["recommend", "42"], without_redis)
    assert result.returncode == 2 and "STREAMREC_REDIS_URL" in result.stderr

    nobody_listens = {**live_stack.env(), "STREAMREC_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    result = run_cli(["replay", str(DATASETS / "ml-100k" / "u.data")], nobody_listens)
    assert result.returncode == 1 and "is unreachable" in result.stderr


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `streamrec ARGS…` and check that whatever it printed has no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "streamrec", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert "Traceback" not in result.stderr
    return result


def test_replay_streams_a_movielens_file_in_time_order(live_stack: LiveStack) -> None:
    counter = live_stack.feature_updates()
    before = counter.update()
    result = live_stack.cli("replay", str(DATASETS / "ml-100k" / "u.data"), "--limit", "300", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "replayed 300 events" in result.stdout
    wait_for(lambda: counter.update() >= before + 300, 60, "ingest to accept the 300 replayed events")
    counter.close()
