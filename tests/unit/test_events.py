"""The interaction event schema and its validation (shared/events.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from streamrec.shared.events import (
    EVENT_WEIGHTS,
    MAX_ID_LENGTH,
    SCHEMA_PATH,
    Interaction,
    Rejection,
    RejectReason,
    _validated_by_model,
    json_schema,
    parse_event,
    plain_event,
)

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def parse(event: Any, **kwargs: Any) -> Interaction | Rejection:
    raw = event if isinstance(event, bytes | str) else orjson.dumps(event)
    return parse_event(raw, now=NOW, **kwargs)


def valid(**fields: Any) -> dict[str, Any]:
    return {"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": NOW - 60, **fields}


def accepted(event: Any, **kwargs: Any) -> Interaction:
    result = parse(event, **kwargs)
    assert isinstance(result, Interaction), result
    return result


def rejected(event: Any, **kwargs: Any) -> RejectReason:
    result = parse(event, **kwargs)
    assert isinstance(result, Rejection), result
    assert result.detail
    return result.reason


# --- accepted events and normalisation --------------------------------------------------------


def test_full_event_is_normalised() -> None:
    event = accepted(valid(user_id=42, item_id="sku-9", event_type="purchase", value=4.5, event_id="e-1"))
    assert event == Interaction("42", "sku-9", "purchase", NOW - 60, 4.5, "e-1")
    assert event.weight == EVENT_WEIGHTS["purchase"]


@pytest.mark.parametrize(("given", "normalised"), [(42, "42"), ("42", "42"), (" 42 ", "42"), (0, "0")])
def test_integer_and_string_ids_are_the_same_id(given: Any, normalised: str) -> None:
    event = accepted(valid(user_id=given, item_id=given))
    assert (event.user_id, event.item_id) == (normalised, normalised)


def test_unknown_event_type_is_accepted_with_default_weight() -> None:
    assert accepted(valid(event_type="share_link")).weight == 1.0


def test_unknown_fields_are_ignored() -> None:
    assert accepted(valid(session="s-1")).user_id == "u1"


def test_str_and_bytes_input_parse_the_same() -> None:
    raw = orjson.dumps(valid())
    assert parse_event(raw, now=NOW) == parse_event(raw.decode(), now=NOW)


def test_interaction_round_trips_through_dict() -> None:
    event = accepted(valid(value=1.0, event_id="x"))
    assert Interaction.from_dict(orjson.loads(orjson.dumps(event.to_dict()))) == event


# --- timestamps -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timestamp", "epoch"),
    [
        (1_699_999_000, 1_699_999_000.0),
        (1_699_999_000.25, 1_699_999_000.25),
        ("1699999000", 1_699_999_000.0),  # numeric string, as exported from CSV
        ("2023-11-14T22:00:00Z", 1_699_999_200.0),
        ("2023-11-14T23:00:00+01:00", 1_699_999_200.0),
        ("2023-11-14T22:00:00.500+00:00", 1_699_999_200.5),
        (0, 0.0),
    ],
)
def test_epoch_and_iso8601_timestamps(timestamp: Any, epoch: float) -> None:
    assert accepted(valid(timestamp=timestamp)).timestamp == epoch


@pytest.mark.parametrize("event", [valid(timestamp=None), {"user_id": 1, "item_id": 2, "event_type": "view"}])
def test_missing_timestamp_defaults_to_arrival_time(event: dict[str, Any]) -> None:
    assert accepted(event).timestamp == NOW


def test_iso8601_without_time_zone_is_rejected() -> None:
    assert rejected(valid(timestamp="2023-11-14T22:00:00")) is RejectReason.BAD_TIMESTAMP


@pytest.mark.parametrize("timestamp", [-1, -0.5])
def test_negative_timestamp_is_rejected(timestamp: float) -> None:
    assert rejected(valid(timestamp=timestamp)) is RejectReason.BAD_TIMESTAMP


def test_future_timestamp_within_clock_skew_is_accepted_beyond_is_rejected() -> None:
    assert accepted(valid(timestamp=NOW + 3600), max_future_seconds=7200).timestamp == NOW + 3600
    assert rejected(valid(timestamp=NOW + 3600), max_future_seconds=60) is RejectReason.BAD_TIMESTAMP
    assert rejected(valid(timestamp="2100-01-01T00:00:00Z")) is RejectReason.BAD_TIMESTAMP


@pytest.mark.parametrize("timestamp", ["yesterday", "", [1], {"s": 1}, True])
def test_timestamp_of_wrong_type_is_rejected(timestamp: Any) -> None:
    assert rejected(valid(timestamp=timestamp)) in {RejectReason.INVALID_FIELD, RejectReason.BAD_TIMESTAMP}


# --- NaN and infinity ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"user_id": 1, "item_id": 2, "event_type": "view", "timestamp": NaN}',
        b'{"user_id": 1, "item_id": 2, "event_type": "view", "timestamp": Infinity}',
        b'{"user_id": 1, "item_id": 2, "event_type": "view", "timestamp": 1e400}',
        b'{"user_id": 1, "item_id": 2, "event_type": "view", "value": -1e400}',
    ],
)
def test_nan_and_infinite_numbers_are_not_json(raw: bytes) -> None:
    assert rejected(raw) is RejectReason.NOT_JSON


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_values_spelled_as_strings_are_rejected(value: str) -> None:
    assert rejected(valid(value=value)) is RejectReason.BAD_VALUE
    assert rejected(valid(timestamp=value)) is RejectReason.BAD_TIMESTAMP


# --- malformed messages ----------------------------------------------------------------------


def test_oversized_message_is_rejected_before_parsing() -> None:
    raw = orjson.dumps(valid(event_id="x" * 200))
    assert rejected(raw, max_bytes=len(raw) - 1) is RejectReason.OVERSIZED
    assert accepted(raw, max_bytes=len(raw)).event_id == "x" * 200


def test_non_utf8_bytes_are_rejected() -> None:
    assert rejected(b'{"user_id": "\xff\xfe", "item_id": 1, "event_type": "view"}') is RejectReason.NOT_UTF8


@pytest.mark.parametrize("raw", [b"", b"not json", b'{"user_id": 1', b"{'user_id': 1}"])
def test_non_json_is_rejected(raw: bytes) -> None:
    assert rejected(raw) is RejectReason.NOT_JSON


@pytest.mark.parametrize("raw", [b"[]", b"[{}]", b'"event"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object_is_rejected(raw: bytes) -> None:
    assert rejected(raw) is RejectReason.NOT_OBJECT


# --- fields -------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["user_id", "item_id", "event_type"])
def test_missing_required_field_is_rejected_and_named(missing: str) -> None:
    event = valid()
    del event[missing]
    result = parse(event)
    assert isinstance(result, Rejection) and result.reason is RejectReason.INVALID_FIELD
    assert missing in result.detail


@pytest.mark.parametrize(
    "fields",
    [
        {"user_id": None},
        {"user_id": 1.5},
        {"user_id": True},
        {"item_id": ["a"]},
        {"item_id": {"id": 1}},
        {"event_type": 3},
        {"value": "lots"},
        {"value": True},
        {"event_id": 5},
        {"event_id": "x" * (MAX_ID_LENGTH + 1)},
    ],
)
def test_wrong_typed_fields_are_rejected(fields: dict[str, Any]) -> None:
    assert rejected(valid(**fields)) is RejectReason.INVALID_FIELD


@pytest.mark.parametrize("user_id", ["", "   ", "a\x00b", "a\nb", "x" * (MAX_ID_LENGTH + 1)])
def test_unusable_ids_are_rejected(user_id: str) -> None:
    assert rejected(valid(user_id=user_id)) is RejectReason.BAD_ID
    assert rejected(valid(item_id=user_id)) is RejectReason.BAD_ID


@pytest.mark.parametrize("event_type", ["view", "add_to_cart", "x", "a" * 32, "rating2"])
def test_event_type_pattern_accepts_lowercase_identifiers(event_type: str) -> None:
    assert accepted(valid(event_type=event_type)).event_type == event_type


@pytest.mark.parametrize("event_type", ["", "View", "2view", "_view", "add-to-cart", "a b", "a" * 33, "vïew"])
def test_event_type_pattern_rejects_everything_else(event_type: str) -> None:
    assert rejected(valid(event_type=event_type)) is RejectReason.INVALID_FIELD


# --- the published JSON Schema -----------------------------------------------------------------


def test_committed_json_schema_matches_the_model() -> None:
    committed = orjson.loads(SCHEMA_PATH.read_bytes())
    assert committed == json_schema(), "regenerate with `python -m streamrec.shared.events`"


def test_json_schema_requires_the_three_fields() -> None:
    schema = json_schema()
    assert sorted(schema["required"]) == ["event_type", "item_id", "user_id"]
    assert set(schema["properties"]) == {"user_id", "item_id", "event_type", "timestamp", "value", "event_id"}


# --- the plain path and pydantic's agree --------------------------------------------------------

# Values of every kind a field may hold, plain or not: what a producer might send.
ANY_ID = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["u1", " u1 ", "", "a\nb", "x" * MAX_ID_LENGTH, "x" * (MAX_ID_LENGTH + 1)]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.floats(allow_nan=True),
    st.none(),
)
ANY_NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.sampled_from([NOW - 60, NOW + 86_400, NOW + 86_401, 0, -1, 2**53, 2**53 + 1, 10**400]),
    st.booleans(),
    st.none(),
    st.sampled_from(["2023-11-14T22:13:20Z", "2023-11-14T22:13:20", "1700000000", "soon"]),
)
ANY_EVENT_TYPE = st.one_of(
    st.sampled_from(["view", "purchase", "add_to_cart", "a" * 32, "a" * 33, "View", "", "x\n", "é"]),
    st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True),
    st.integers(),
    st.none(),
)
ANY_EVENT_ID = st.one_of(st.none(), st.text(max_size=4), st.just("e" * 257), st.integers(), st.booleans())


def mostly(valid: st.SearchStrategy[Any], anything: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` about nine times in ten: most drawn events are plain but for one of their fields."""
    return st.integers(0, 9).flatmap(lambda n: anything if n == 0 else valid)


@settings(max_examples=3_000, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "user_id": mostly(st.sampled_from(["u1", 7, " u2 "]), ANY_ID),
            "item_id": mostly(st.sampled_from(["i1", 3]), ANY_ID),
            "event_type": mostly(st.sampled_from(["view", "add_to_cart"]), ANY_EVENT_TYPE),
        },
        optional={
            "timestamp": mostly(st.floats(0, NOW + 86_400) | st.integers(0, int(NOW)), ANY_NUMBER),
            "value": mostly(st.floats(-5, 5) | st.integers(-5, 5), ANY_NUMBER),
            "event_id": mostly(st.sampled_from(["e1", "", "e" * MAX_ID_LENGTH]), ANY_EVENT_ID),
            "extra": st.integers(),
        },
    )
)
@example({**valid(), "value": float("inf")})
@example({**valid(), "value": float("nan")})
@example({**valid(), "timestamp": NOW + 86_400.5})
@example({**valid(), "timestamp": 2**53 + 1})
@example({**valid(), "event_type": "a" * 33})
@example({**valid(), "event_id": "e" * (MAX_ID_LENGTH + 1)})
@example({**valid(), "user_id": True})
def test_the_plain_path_gives_what_the_model_gives(data: dict[str, Any]) -> None:
    """Whatever plain_event accepts, the pydantic path accepts as the same Interaction."""
    plain = plain_event(data, NOW, 86_400.0)
    if plain is not None:
        assert _validated_by_model(data, NOW, 86_400.0) == plain
    event(f"plain path: {plain is not None}")


def test_plain_events_take_the_plain_path() -> None:
    for plain in [
        valid(),
        valid(user_id=42, value=4.5, event_id="e1"),
        valid(timestamp=None),
        valid(value=3),
    ]:
        assert plain_event(plain, NOW, 86_400.0) == parse(plain)
    assert plain_event(valid(timestamp="2023-11-14T22:13:20Z"), NOW, 86_400.0) is None  # left to pydantic
