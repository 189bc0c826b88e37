"""Every service answers /healthz, /readyz and /metrics, and the metrics count what happened."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from streamrec.processes import free_port
from streamrec.shared.registry import ModelRegistry
from streamrec.synthetic import generate

from support import TrainedStack, wait_for

pytestmark = pytest.mark.integration


def samples(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The /metrics page as {(sample name, sorted labels): value}."""
    response = httpx.get(f"{base}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_ingest_and_scorer_report_health_and_what_they_did(trained_stack: TrainedStack) -> None:
    live = trained_stack.live
    events = len(trained_stack.events)
    for service in ("ingest", "scorer"):
        base = f"http://127.0.0.1:{live.stack.ops_ports[service]}"
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        wait_for(lambda base=base: ready(base), 60, f"{service} /readyz")
        assert httpx.get(f"{base}/nope", timeout=5).status_code == 404

    ingest_base = f"http://127.0.0.1:{live.stack.ops_ports['ingest']}"
    not_json = ("streamrec_ingest_invalid_events_total", (("reason", "not_json"),))
    before = samples(ingest_base).get(not_json, 0)
    producer = Producer({"bootstrap.servers": live.settings.kafka_bootstrap})
    producer.produce(live.settings.topic_interactions, b"this is not an event")
    assert producer.flush(30) == 0
    wait_for(
        lambda: samples(ingest_base).get(not_json, 0) >= before + 1, 60, "the invalid event to be counted"
    )
    ingest = samples(ingest_base)
    accepted = ingest[("streamrec_ingest_events_total", (("outcome", "accepted"),))]
    assert accepted >= events
    # Observed once per bundle of events: at least one, at most one per accepted event.
    assert 1 <= ingest[("streamrec_ingest_feature_update_seconds_count", ())] <= accepted

    scorer = samples(f"http://127.0.0.1:{live.stack.ops_ports['scorer']}")
    written = sum(value for (name, _), value in scorer.items() if name == "streamrec_scorer_lists_total")
    assert written >= trained_stack.events.user_id.nunique()
    assert scorer[("streamrec_scorer_scoring_seconds_count", ())] > 0
    assert scorer[("streamrec_scorer_freshness_seconds_count", ())] > 0
    served = live.redis.get(live.keys.model).decode()
    assert scorer[("streamrec_scorer_model_info", (("version", served),))] == 1


def test_api_reports_health_and_request_metrics(trained_stack: TrainedStack) -> None:
    settings = trained_stack.live.settings
    base = f"http://{settings.api_host}:{settings.api_port}"
    user = trained_stack.events.user_id.iloc[0]
    assert httpx.get(f"{base}/users/{user}/recommendations", timeout=5).status_code == 200
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
    api = samples(base)
    route = "/users/{user_id}/recommendations"
    assert api[("streamrec_api_requests_total", (("route", route), ("status", "200")))] >= 1
    assert api[("streamrec_api_request_seconds_count", (("route", route),))] >= 1


def test_trainer_reports_health_and_its_log(trained_stack: TrainedStack, tmp_path: Path) -> None:
    live = trained_stack.live
    port = free_port()
    env = {
        **live.env(),
        # Its own state, and no cycle during the test: the shared stack's model stays as it is.
        "STREAMREC_DATA_DIR": str(tmp_path),
        "STREAMREC_MODEL_DIR": str(tmp_path / "models"),
        "STREAMREC_TRAIN_MIN_NEW_EVENTS": "100000000",
        "STREAMREC_TRAIN_INTERVAL_SECONDS": "100000",
        "STREAMREC_METRICS_PORT": str(port),
    }
    log_path = tmp_path / "trainer.log"
    with open(log_path, "wb") as log_file:
        trainer = subprocess.Popen([sys.executable, "-m", "streamrec", "trainer"], env=env, stderr=log_file)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: ready(base), 60, "trainer /readyz")
        wait_for(
            lambda: samples(base).get(("streamrec_trainer_log_position", ()), 0) >= len(trained_stack.events),
            60,
            "the trainer's log to read the stream",
        )
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    finally:
        trainer.terminate()
        assert trainer.wait(30) == 0, log_path.read_text()[-3000:]


def test_status_shows_readiness_lags_the_served_model_and_the_lists(trained_stack: TrainedStack) -> None:
    live = trained_stack.live
    settings = live.settings
    endpoints = {name: f"http://127.0.0.1:{port}" for name, port in live.stack.ops_ports.items()}
    endpoints["api"] = f"http://{settings.api_host}:{settings.api_port}"
    endpoints["trainer"] = f"http://127.0.0.1:{free_port()}"  # not running in this stack
    env = {"STREAMREC_STATUS_ENDPOINTS": ",".join(f"{k}={v}" for k, v in endpoints.items())}
    for service in ("ingest", "scorer"):
        wait_for(lambda service=service: ready(endpoints[service]), 60, f"{service} /readyz")

    # Events after the last training: no trainer runs in this stack to take them.
    fresh = generate(users=6, items=10, clusters=2, events_per_user=(5, 5), seed=41, user_prefix="status-u")
    live.stream_in(fresh, "status")

    def lists_in_redis() -> int:
        return sum(1 for _ in live.redis.scan_iter(match=live.keys.recs("*"), count=10_000))

    def settled() -> dict | None:
        result = live.cli("status", "--json", env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        shown = json.loads(result.stdout)
        behind = shown["behind_events"]
        # Quiet stack: ingest and the scorer have taken everything (the scorer commits about 1/s).
        return shown if behind["ingest"] == 0 and behind["scorer"] == 0 else None

    shown = wait_for(settled, 60, "status to show ingest and the scorer caught up")
    ready_by_name = {service["name"]: service["ready"] for service in shown["services"]}
    assert ready_by_name == {"ingest": True, "scorer": True, "api": True, "trainer": False}
    assert shown["problems"] == []
    assert shown["behind_events"]["trainer"] >= len(fresh)
    assert shown["model"]["version"] == ModelRegistry(settings.model_dir).promoted_version()
    assert shown["model"]["age_seconds"] > 0
    assert shown["lists"] == lists_in_redis() > 0

    readable = live.cli("status", env=env)
    assert readable.returncode == 0
    assert "trainer  NOT READY" in readable.stdout and shown["model"]["version"] in readable.stdout
