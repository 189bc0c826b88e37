"""The item catalog: what users publish about items, and the serving view every reader filters with.

One JSON object per Kafka message on the ``items`` topic (key = item id), a later message for an
item replacing the earlier one::

    {"item_id": "sku-9", "hidden": false, "categories": ["shoes", "sale"],
     "expires_at": 1767225600, "properties": {"title": "Trail runner"}}

Only ``item_id`` is required. ``expires_at`` takes epoch seconds or ISO-8601 like event
timestamps; from then on the item is served no more. A message without a value (a tombstone, as
on a compacted topic) removes the item's entry: it is served again, without categories.

``parse_item`` turns raw bytes into an :class:`ItemRecord` or a :class:`Rejection` (the reasons of
``shared/events.py``); ``schemas/item.schema.json`` is generated from :class:`ItemIn`
(``python -m streamrec.shared.catalog`` rewrites it).

:class:`ServingCatalog` is what serving needs of the catalog (availability and categories, not
the properties): the scorer keeps one and writes it to Redis as one value (:meth:`ServingCatalog.encode`),
readers keep a copy and filter every list they return with it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, field_validator

from streamrec.shared.events import (
    Id,
    Rejection,
    RejectReason,
    decode_json_object,
    epoch_seconds,
    normalise_id,
    wire_schema,
    write_wire_schema,
)

SCHEMA_PATH = Path(__file__).parent / "schemas" / "item.schema.json"
MAX_CATEGORIES = 64
MAX_CATEGORY_LENGTH = 128

Category = Annotated[StrictStr, Field(min_length=1, max_length=MAX_CATEGORY_LENGTH)]


class ItemIn(BaseModel):
    """An item of the catalog as published by users (the wire format, before normalisation)."""

    model_config = ConfigDict(extra="ignore", title="Item")

    item_id: Id
    hidden: StrictBool = Field(False, description="True: never recommend the item (until a later message).")
    categories: list[Category] = Field(
        default_factory=list,
        max_length=MAX_CATEGORIES,
        description="Categories the item is in; read-time filters select by them.",
    )
    expires_at: float | datetime | None = Field(
        None, description="Epoch seconds or ISO-8601: from then on the item is not recommended."
    )
    properties: dict[str, Any] = Field(
        default_factory=dict, description="Free-form attributes, kept in ingest's catalog table."
    )

    @field_validator("expires_at", mode="before")
    @classmethod
    def _no_booleans(cls, value: object) -> object:
        if isinstance(value, bool):  # pydantic's lax float would take true as 1970-01-01
            raise ValueError("expected a number or an ISO-8601 time, got a boolean")
        return value


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """A validated catalog entry: normalised id and categories, ``expires_at`` in epoch seconds."""

    item_id: str
    hidden: bool = False
    categories: tuple[str, ...] = ()
    expires_at: float | None = None
    properties: dict[str, Any] = field(default_factory=dict)

    def available(self, now: float) -> bool:
        """Whether the item may be recommended at ``now``."""
        return not self.hidden and (self.expires_at is None or now < self.expires_at)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (ingest's table and the catalog topic)."""
        return {
            "item_id": self.item_id,
            "hidden": self.hidden,
            "categories": list(self.categories),
            "expires_at": self.expires_at,
            "properties": self.properties,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemRecord:
        """Inverse of :meth:`to_dict` (trusted input: validated upstream)."""
        return cls(
            item_id=str(data["item_id"]),
            hidden=bool(data.get("hidden", False)),
            categories=tuple(data.get("categories", ())),
            expires_at=None if data.get("expires_at") is None else float(data["expires_at"]),
            properties=dict(data.get("properties") or {}),
        )


def parse_item(raw: bytes | str, *, max_bytes: int = 65536) -> ItemRecord | Rejection:
    """Validate one raw ``items`` message. Returns the normalised record or why it was rejected."""
    data = decode_json_object(raw, max_bytes)
    if isinstance(data, Rejection):
        return data
    return validate_item(data)


def validate_item(data: dict[str, Any]) -> ItemRecord | Rejection:
    """Validate an already-decoded item object."""
    try:
        item = ItemIn.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "item"
        return Rejection(RejectReason.INVALID_FIELD, f"{where}: {first['msg']}")
    item_id = normalise_id(item.item_id)
    if item_id is None:
        return Rejection(RejectReason.BAD_ID, "item_id is empty, too long or has control characters")
    categories: list[str] = []
    for category in item.categories:
        name = normalise_id(category)
        if name is None:
            return Rejection(
                RejectReason.INVALID_FIELD, f"category {category!r} is blank or has control characters"
            )
        if name not in categories:
            categories.append(name)
    expires_at = None if item.expires_at is None else epoch_seconds(item.expires_at)
    if isinstance(expires_at, Rejection):
        return Rejection(RejectReason.BAD_TIMESTAMP, f"expires_at: {expires_at.detail}")
    return ItemRecord(item_id, item.hidden, tuple(categories), expires_at, item.properties)


class ServingCatalog:
    """Availability and categories of the items that have either, as of an offset of the catalog topic.

    Items without an entry are available and in no category. Categories are interned: a catalog
    of many items in few categories keeps one string per category.
    """

    def __init__(self) -> None:
        self.offset = -1  # the catalog topic's offset the view includes (-1: nothing yet)
        self._hidden: set[str] = set()
        self._expires: dict[str, float] = {}
        self._categories: dict[str, tuple[str, ...]] = {}
        self._names: dict[str, str] = {}
        self._members: dict[str, set[str]] = {}  # category -> its items
        self._allowed: dict[frozenset[str], frozenset[str]] = {}  # in_any()'s answers, until a change
        # unavailable()'s answer, valid until the next expiry or change: readers ask on every read.
        self._unavailable: frozenset[str] = frozenset()
        self._valid_until = -math.inf
        self._computed_at = math.inf

    def clear(self) -> None:
        """Forget every entry."""
        self.offset = -1
        for entries in (
            self._hidden,
            self._expires,
            self._categories,
            self._names,
            self._members,
            self._allowed,
        ):
            entries.clear()
        self._valid_until = -math.inf

    def apply(self, item_id: str, record: ItemRecord | None) -> None:
        """Set one item's entry (None: remove it, the item is unrestricted again)."""
        self._valid_until = -math.inf
        self._hidden.discard(item_id)
        self._expires.pop(item_id, None)
        for category in self._categories.pop(item_id, ()):
            self._members[category].discard(item_id)
        self._allowed.clear()
        if record is None:
            return
        if record.hidden:
            self._hidden.add(item_id)
        if record.expires_at is not None:
            self._expires[item_id] = record.expires_at
        if record.categories:
            self._categories[item_id] = tuple(self._names.setdefault(c, c) for c in record.categories)
            for category in self._categories[item_id]:
                self._members.setdefault(category, set()).add(item_id)

    def available(self, item_id: str, now: float) -> bool:
        """Whether ``item_id`` may be recommended at ``now``."""
        if item_id in self._hidden:
            return False
        expires = self._expires.get(item_id)
        return expires is None or now < expires

    def unavailable(self, now: float | None = None) -> frozenset[str]:
        """Every item that may not be recommended at ``now`` (hidden or expired): the same object
        until an entry changes or the next expiry passes (callers may cache what they derive from it)."""
        now = time.time() if now is None else now
        if now >= self._valid_until or now < self._computed_at:
            self._unavailable = frozenset(
                self._hidden.union(i for i, at in self._expires.items() if at <= now)
            )
            self._valid_until = min((at for at in self._expires.values() if at > now), default=math.inf)
            self._computed_at = now
        return self._unavailable

    def categories_of(self, item_id: str) -> tuple[str, ...]:
        """The item's categories (empty if it has none or no entry)."""
        return self._categories.get(item_id, ())

    def items_in(self, categories: frozenset[str]) -> frozenset[str]:
        """Items in any of ``categories``: the same object until an entry changes (reads filter by
        the same few category sets again and again)."""
        allowed = self._allowed.get(categories)
        if allowed is None:
            if len(self._allowed) >= 256:
                self._allowed.clear()
            members = [self._members.get(category, ()) for category in categories]
            allowed = self._allowed[categories] = frozenset().union(*members)
        return allowed

    def __len__(self) -> int:
        return len(self._hidden | self._expires.keys() | self._categories.keys())

    def encode(self) -> bytes:
        """One Redis value: ``{"offset": n, "items": {item_id: [hidden, expires_at, [categories]]}}``."""
        items = {
            item: [item in self._hidden, self._expires.get(item), list(self._categories.get(item, ()))]
            for item in self._hidden | self._expires.keys() | self._categories.keys()
        }
        return orjson.dumps({"offset": self.offset, "items": items})

    @classmethod
    def decode(cls, raw: bytes) -> ServingCatalog:
        """Inverse of :meth:`encode`; raises ValueError for a value in no form this version reads."""
        try:
            data = orjson.loads(raw)
            catalog = cls()
            catalog.offset = int(data["offset"])
            for item, (hidden, expires_at, categories) in data["items"].items():
                record = ItemRecord(item, bool(hidden), tuple(categories), expires_at)
                catalog.apply(item, record)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a serving catalog: {exc!r}") from None
        return catalog


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a published item, generated from :class:`ItemIn`."""
    return wire_schema(ItemIn, SCHEMA_PATH)


if __name__ == "__main__":
    write_wire_schema(ItemIn, SCHEMA_PATH)
    print(f"wrote {SCHEMA_PATH}")
