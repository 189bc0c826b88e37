"""The interaction event: the one message users publish to streamrec.

One JSON object per Kafka message on the ``interactions`` topic (key = user_id recommended)::

    {"user_id": 42, "item_id": "sku-9", "event_type": "purchase",
     "timestamp": 1732851234.5, "value": 1.0, "event_id": "e-123"}

``user_id`` and ``item_id`` may be strings or integers; streamrec normalises both to strings
(``42`` and ``"42"`` are the same user). ``timestamp`` is epoch seconds or ISO-8601 and defaults
to arrival time. ``value`` is optional (e.g. the rating), ``event_id`` optional (de-duplication).

``parse_event`` turns raw bytes into an :class:`Interaction` or a :class:`Rejection` with a
machine-readable reason; it never raises on bad input. ``schemas/interaction.schema.json`` is
generated from :class:`InteractionIn` (``python -m streamrec.shared.events`` rewrites it).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

SCHEMA_PATH = Path(__file__).parent / "schemas" / "interaction.schema.json"

MAX_ID_LENGTH = 256
EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"

# Weight of each well-known event type as an implicit-feedback signal. Unknown but well-formed
# types are accepted with DEFAULT_EVENT_WEIGHT.
EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 1.0,
    "rating": 1.0,
    "like": 2.0,
    "add_to_cart": 2.0,
    "purchase": 3.0,
}
DEFAULT_EVENT_WEIGHT = 1.0
# The event type whose value is an explicit rating: what rating models (rating-mf) learn from.
RATING_EVENT_TYPE = "rating"

Id = Annotated[StrictStr | StrictInt, Field(description="String or integer; normalised to a string.")]


class InteractionIn(BaseModel):
    """An interaction event as published by users (the wire format, before normalisation)."""

    model_config = ConfigDict(extra="ignore", title="Interaction")

    user_id: Id
    item_id: Id
    event_type: str = Field(
        pattern=EVENT_TYPE_PATTERN,
        description="view, click, add_to_cart, purchase, rating, … (lowercase identifier).",
    )
    timestamp: float | datetime | None = Field(
        None, description="Epoch seconds or ISO-8601. Defaults to the time the event arrives."
    )
    value: float | None = Field(None, description="Optional strength, e.g. the rating.")
    event_id: str | None = Field(
        None, max_length=MAX_ID_LENGTH, description="Optional unique id; duplicates are dropped."
    )

    @field_validator("timestamp", "value", mode="before")
    @classmethod
    def _no_booleans(cls, value: object) -> object:
        # pydantic's lax float would take JSON true/false as 1.0/0.0 (a 1970 timestamp).
        if isinstance(value, bool):
            raise ValueError("expected a number, got a boolean")
        return value


@dataclass(frozen=True, slots=True)
class Interaction:
    """A validated, normalised interaction: ids are strings, timestamp is epoch seconds."""

    user_id: str
    item_id: str
    event_type: str
    timestamp: float
    value: float | None = None
    event_id: str | None = None

    @property
    def weight(self) -> float:
        """Implicit-feedback weight of this event's type."""
        return EVENT_WEIGHTS.get(self.event_type, DEFAULT_EVENT_WEIGHT)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the normalised event as forwarded between services)."""
        return {
            "user_id": self.user_id,
            "item_id": self.item_id,
            "event_type": self.event_type,
            "timestamp": self.timestamp,
            "value": self.value,
            "event_id": self.event_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Interaction:
        """Inverse of :meth:`to_dict` (trusted input: already validated upstream)."""
        return cls(
            user_id=data["user_id"],
            item_id=data["item_id"],
            event_type=data["event_type"],
            timestamp=float(data["timestamp"]),
            value=data.get("value"),
            event_id=data.get("event_id"),
        )


class RejectReason(StrEnum):
    """Machine-readable reasons an event goes to the dead-letter topic."""

    OVERSIZED = "oversized"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    INVALID_FIELD = "invalid_field"
    BAD_ID = "bad_id"
    BAD_TIMESTAMP = "bad_timestamp"
    BAD_VALUE = "bad_value"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an event was refused, with a human-readable detail."""

    reason: RejectReason
    detail: str


def normalise_id(value: str | int) -> str | None:
    """Canonical string form of a user/item id, or None if it is not a usable id."""
    text = str(value).strip()
    if not text or len(text) > MAX_ID_LENGTH or "\x00" in text or "\n" in text or "\r" in text:
        return None
    return text


def resolve_user_id(user_id: str | int) -> str:
    """Normalise a user id like ingest does (``42`` and ``" 42 "`` are user ``"42"``).

    Raises ValueError if it can never be a user id (empty, too long, control characters).
    """
    normalised = normalise_id(user_id)
    if normalised is None:
        raise ValueError(
            f"invalid user id {user_id!r}: empty, longer than 256 characters or control characters"
        )
    return normalised


def resolve_item_id(item_id: str | int) -> str:
    """Normalise an item id like ingest does; raises ValueError if it can never be an item id."""
    normalised = normalise_id(item_id)
    if normalised is None:
        raise ValueError(
            f"invalid item id {item_id!r}: empty, longer than 256 characters or control characters"
        )
    return normalised


def parse_event(
    raw: bytes | str,
    *,
    now: float | None = None,
    max_bytes: int = 65536,
    max_future_seconds: float = 86400.0,
) -> Interaction | Rejection:
    """Validate one raw message. Returns the normalised event or why it was rejected."""
    data = decode_json_object(raw, max_bytes)
    if isinstance(data, Rejection):
        return data
    return validate_event(data, now=now, max_future_seconds=max_future_seconds)


def decode_json_object(raw: bytes | str, max_bytes: int) -> dict[str, Any] | Rejection:
    """The JSON object of one raw message (at most ``max_bytes``), or why it is not one."""
    if len(raw) > max_bytes:
        return Rejection(RejectReason.OVERSIZED, f"{len(raw)} bytes > limit {max_bytes}")
    try:
        data = orjson.loads(raw)  # bytes are checked as UTF-8 by orjson itself, without a copy
    except orjson.JSONDecodeError as exc:
        if isinstance(raw, bytes):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as not_utf8:
                return Rejection(RejectReason.NOT_UTF8, str(not_utf8))
        return Rejection(RejectReason.NOT_JSON, str(exc))
    if not isinstance(data, dict):
        return Rejection(RejectReason.NOT_OBJECT, f"expected a JSON object, got {type(data).__name__}")
    return data


def epoch_seconds(value: float | datetime) -> float | Rejection:
    """A wire timestamp (epoch seconds, or an ISO-8601 time with a zone) as epoch seconds."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return Rejection(RejectReason.BAD_TIMESTAMP, "ISO-8601 timestamp needs a time zone")
        timestamp = value.timestamp()
    else:
        timestamp = float(value)
    if not math.isfinite(timestamp) or timestamp < 0:
        return Rejection(RejectReason.BAD_TIMESTAMP, f"timestamp {timestamp!r} is not a valid time")
    return timestamp


# The plain form of an event, checked without pydantic (see plain_event).
_EVENT_TYPE = re.compile(EVENT_TYPE_PATTERN.removeprefix("^").removesuffix("$"))
_ID_TYPES = (str, int)
_EXACT_FLOAT = 2**53  # ints up to this convert to floats exactly: pydantic is left the larger ones


def _plain_number(value: object) -> float | None:
    """A JSON number as a float, or None if it is not a plain finite one (a bool, a huge int, NaN…)."""
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None  # type: ignore[arg-type]
    if kind is int and -_EXACT_FLOAT <= value <= _EXACT_FLOAT:  # type: ignore[operator]
        return float(value)  # type: ignore[arg-type]
    return None


def plain_event(data: dict[str, Any], arrival: float, max_future_seconds: float) -> Interaction | None:
    """The event of ``data`` if it is in the plain form nearly every producer sends, else None.

    Plain: string or integer ids, a string event type, a finite number (or no) timestamp within
    ``max_future_seconds`` of ``arrival``, a finite number (or no) value, a string (or no) event id,
    each valid. For such an object this is exactly what :class:`InteractionIn` and the checks after
    it give (a unit test holds the two paths together), at a fraction of pydantic's cost; anything
    else (ISO times, numbers in strings, any error) returns None, so that :func:`validate_event`
    decides it and words its rejection.
    """
    user_id, item_id, event_type = data.get("user_id"), data.get("item_id"), data.get("event_type")
    if type(user_id) not in _ID_TYPES or type(item_id) not in _ID_TYPES or type(event_type) is not str:
        return None
    if not _EVENT_TYPE.fullmatch(event_type):
        return None
    if (raw_timestamp := data.get("timestamp")) is None:
        timestamp = arrival
    elif (
        timestamp := _plain_number(raw_timestamp)
    ) is None or not 0 <= timestamp <= arrival + max_future_seconds:
        return None
    if (value := data.get("value")) is not None and (value := _plain_number(value)) is None:
        return None
    event_id = data.get("event_id")
    if event_id is not None and (type(event_id) is not str or len(event_id) > MAX_ID_LENGTH):
        return None
    user, item = normalise_id(user_id), normalise_id(item_id)  # type: ignore[arg-type]
    if user is None or item is None:
        return None
    return Interaction(user, item, event_type, timestamp, value, event_id)


def validate_event(
    data: dict[str, Any], *, now: float | None = None, max_future_seconds: float = 86400.0
) -> Interaction | Rejection:
    """Validate an already-decoded event object."""
    arrival = time.time() if now is None else now
    if (event := plain_event(data, arrival, max_future_seconds)) is not None:
        return event
    return _validated_by_model(data, arrival, max_future_seconds)


def _validated_by_model(
    data: dict[str, Any], arrival: float, max_future_seconds: float
) -> Interaction | Rejection:
    """Validate an event with :class:`InteractionIn` (every form it takes) and word any rejection."""
    try:
        event = InteractionIn.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "event"
        return Rejection(RejectReason.INVALID_FIELD, f"{field}: {first['msg']}")

    user_id, item_id = normalise_id(event.user_id), normalise_id(event.item_id)
    if user_id is None or item_id is None:
        which = "user_id" if user_id is None else "item_id"
        return Rejection(RejectReason.BAD_ID, f"{which} is empty, too long or has control characters")

    timestamp = arrival if event.timestamp is None else epoch_seconds(event.timestamp)
    if isinstance(timestamp, Rejection):
        return timestamp
    if timestamp > arrival + max_future_seconds:
        return Rejection(RejectReason.BAD_TIMESTAMP, f"timestamp {timestamp} is in the future")

    if event.value is not None and not math.isfinite(event.value):
        return Rejection(RejectReason.BAD_VALUE, f"value {event.value!r} is not finite")

    return Interaction(
        user_id=user_id,
        item_id=item_id,
        event_type=event.event_type,
        timestamp=timestamp,
        value=event.value,
        event_id=event.event_id,
    )


def wire_schema(model: type[BaseModel], path: Path) -> dict[str, Any]:
    """The JSON Schema of a wire format (a pydantic model), with the id of its committed ``path``."""
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://streamrec.dev/schemas/{path.name}"
    return schema


def write_wire_schema(model: type[BaseModel], path: Path) -> None:
    """Regenerate a committed JSON Schema file from its model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        orjson.dumps(wire_schema(model, path), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    )


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the published event, generated from :class:`InteractionIn`."""
    return wire_schema(InteractionIn, SCHEMA_PATH)


if __name__ == "__main__":
    write_wire_schema(InteractionIn, SCHEMA_PATH)
    print(f"wrote {SCHEMA_PATH}")
