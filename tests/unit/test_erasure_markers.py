"""Erasing a user, the pure parts: the forget message, FeatureBatch.forgotten, ingest's markers, the API's guard."""

from __future__ import annotations

import orjson
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from streamrec.api.admin import admin_refusal
from streamrec.api.app import create_app
from streamrec.ingest.erasure import ErasureMarkers, Marker, user_hash
from streamrec.shared.events import Interaction
from streamrec.shared.kafka_topics import topic_specs
from streamrec.shared.messages import FeatureBatch, ForgetUser, UserSnapshot, decode_feature_batch
from streamrec.shared.settings import Settings

# --- contracts -------------------------------------------------------------------------------


def test_forget_request_round_trips_in_the_documented_form() -> None:
    request = ForgetUser("42", requested_at=1_700_000_000.5)
    assert orjson.loads(request.to_json()) == {
        "type": "forget_user",
        "user_id": "42",
        "requested_at": 1_700_000_000.5,
    }
    assert ForgetUser.from_json(request.to_json()) == request


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"type": "something_else", "user_id": "42", "requested_at": 1}',
        b'{"type": "forget_user", "requested_at": 1}',
        b'{"type": "forget_user", "user_id": 42, "requested_at": 1}',
        b'{"type": "forget_user", "user_id": "", "requested_at": 1}',
        b'{"type": "forget_user", "user_id": "42", "requested_at": "soon"}',
        None,
    ],
)
def test_anything_but_a_forget_request_is_refused(raw: bytes | None) -> None:
    with pytest.raises(ValueError):
        ForgetUser.from_json(raw)


def test_the_control_topic_is_partitioned_like_the_interactions() -> None:
    settings = Settings(partitions=6)
    specs = {spec.name: spec.partitions for spec in topic_specs(settings)}
    assert specs[settings.topic_control] == specs[settings.topic_interactions] == 6


def test_feature_batch_carries_forgotten_users() -> None:
    event = Interaction("7", "i1", "view", 1.0)
    batch = FeatureBatch([UserSnapshot("7", ["i1"], 1)], [event], 2.0, forgotten=["u1", "u2"])
    assert orjson.loads(batch.to_json())["forgotten"] == ["u1", "u2"]
    assert decode_feature_batch(batch.to_json()) == batch


def test_feature_batch_without_forgotten_users_keeps_the_old_form() -> None:
    batch = FeatureBatch([UserSnapshot("7", ["i1"], 1)], [Interaction("7", "i1", "view", 1.0)], 2.0)
    assert "forgotten" not in orjson.loads(batch.to_json())  # older readers see what they know
    old = orjson.dumps({"users": [["7", ["i1"], 1]], "events": [], "updated_at": 2.0})
    assert decode_feature_batch(old).forgotten == []


# --- ingest's markers ------------------------------------------------------------------------


def test_a_marker_drops_events_up_to_the_request_and_names_no_user() -> None:
    markers = ErasureMarkers(hold_seconds=100.0)
    key, marker = markers.mark(1, "alice", requested_at=50.0, now=60.0)
    assert key == user_hash("alice") and "alice" not in key and len(key) == 64
    assert marker == Marker(requested_at=50.0, expires_at=160.0)
    assert markers.cutoff(1, "alice") == 50.0
    assert markers.cutoff(1, "bob") is None
    assert markers.cutoff(0, "alice") is None  # markers are per partition
    assert markers.partitions() == [1] and len(markers) == 1


def test_a_second_request_keeps_the_later_cutoff_and_expiry() -> None:
    markers = ErasureMarkers(hold_seconds=100.0)
    markers.mark(0, "alice", requested_at=50.0, now=60.0)
    _, marker = markers.mark(0, "alice", requested_at=40.0, now=70.0)  # an older request, delivered later
    assert marker == Marker(requested_at=50.0, expires_at=170.0)
    assert markers.cutoff(0, "alice") == 50.0


def test_markers_expire_after_the_hold() -> None:
    markers = ErasureMarkers(hold_seconds=100.0)
    key, _ = markers.mark(0, "alice", requested_at=50.0, now=0.0)
    markers.mark(0, "bob", requested_at=50.0, now=10.0)
    assert markers.expired(0, now=99.0) == []
    assert markers.expired(0, now=100.0) == [key]
    assert markers.cutoff(0, "alice") is None and markers.cutoff(0, "bob") == 50.0
    assert markers.expired(1, now=1000.0) == []


def test_markers_are_mirrored_from_their_table_values() -> None:
    source = ErasureMarkers(hold_seconds=100.0)
    key, marker = source.mark(3, "alice", requested_at=50.0, now=0.0)
    stored = orjson.loads(orjson.dumps({"partition": 3, **marker.to_dict()}))  # as the table keeps it
    mirror = ErasureMarkers(hold_seconds=100.0)
    mirror.load(stored["partition"], key, stored)
    assert mirror.cutoff(3, "alice") == 50.0
    mirror.clear()
    assert mirror.cutoff(3, "alice") is None and len(mirror) == 0


# --- the HTTP API's guard --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 401),
        ("", 401),
        ("Bearer", 401),
        ("Bearer wrong", 401),
        ("Basic s3cret-token", 401),
        ("Bearer s3cret-token-and-more", 401),
        ("Bearer s3cret-token", None),
        ("bearer s3cret-token", None),
    ],
)
def test_the_admin_token_is_required(header: str | None, status: int | None) -> None:
    refusal = admin_refusal(header, SecretStr("s3cret-token"))
    assert (refusal[0] if refusal else None) == status


@pytest.mark.parametrize("token", [None, SecretStr("")])
def test_without_a_configured_token_erasure_is_disabled(token: SecretStr | None) -> None:
    refusal = admin_refusal("Bearer anything", token)
    assert refusal is not None and refusal[0] == 503 and "STREAMREC_API_ADMIN_TOKEN" in refusal[1]


def test_the_delete_endpoint_refuses_before_it_needs_kafka() -> None:
    # No Redis or Kafka is contacted: the guard answers first (the accepted path is an integration test).
    settings = Settings(redis_url="redis://127.0.0.1:1/0", kafka_bootstrap="127.0.0.1:1")
    with TestClient(create_app(settings)) as client:
        assert client.delete("/users/42").status_code == 503
    guarded = settings.model_copy(update={"api_admin_token": SecretStr("s3cret-token")})
    with TestClient(create_app(guarded)) as client:
        response = client.delete("/users/42", headers={"Authorization": "Bearer nope"})
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert "token" in response.json()["detail"]
