"""The catalog contract: validation of items messages, the serving catalog, per-category popularity."""

from __future__ import annotations

import orjson
import pytest

from streamrec.ingest.category_popularity import CATEGORIES_PER_MESSAGE, CategoryPopularity, chunks
from streamrec.ingest.features import ItemPopularity
from streamrec.shared.catalog import SCHEMA_PATH, ItemRecord, ServingCatalog, json_schema, parse_item
from streamrec.shared.events import Rejection, RejectReason
from streamrec.shared.messages import CatalogChange, PopularItems


def test_only_the_item_id_is_required_and_ids_are_normalised() -> None:
    record = parse_item(b'{"item_id": 42}')
    assert record == ItemRecord("42")
    assert record.available(now=0.0)


def test_a_full_entry_is_normalised() -> None:
    raw = orjson.dumps(
        {
            "item_id": " sku-9 ",
            "hidden": False,
            "categories": ["shoes", " sale", "shoes"],
            "expires_at": "2026-01-01T00:00:00Z",
            "properties": {"title": "Trail runner"},
        }
    )
    record = parse_item(raw)
    assert record == ItemRecord("sku-9", False, ("shoes", "sale"), 1767225600.0, {"title": "Trail runner"})
    assert record.available(1767225599.0) and not record.available(1767225600.0)
    assert parse_item(orjson.dumps({"item_id": 1, "expires_at": 1767225600})).expires_at == 1767225600.0


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", RejectReason.NOT_JSON),
        (b"[1]", RejectReason.NOT_OBJECT),
        (b"\xff", RejectReason.NOT_UTF8),
        (b'{"hidden": true}', RejectReason.INVALID_FIELD),
        (b'{"item_id": "a", "hidden": "yes"}', RejectReason.INVALID_FIELD),
        (b'{"item_id": "a", "hidden": 1}', RejectReason.INVALID_FIELD),
        (b'{"item_id": "a", "categories": "shoes"}', RejectReason.INVALID_FIELD),
        (b'{"item_id": "a", "categories": [" "]}', RejectReason.INVALID_FIELD),
        (b'{"item_id": "a", "expires_at": true}', RejectReason.INVALID_FIELD),
        (b'{"item_id": "a", "expires_at": "2026-01-01T00:00:00"}', RejectReason.BAD_TIMESTAMP),
        (b'{"item_id": "a", "expires_at": -1}', RejectReason.BAD_TIMESTAMP),
        (b'{"item_id": " "}', RejectReason.BAD_ID),
    ],
)
def test_invalid_messages_are_refused_with_a_reason(raw: bytes, reason: RejectReason) -> None:
    result = parse_item(raw)
    assert isinstance(result, Rejection) and result.reason == reason and result.detail


def test_oversized_messages_are_refused() -> None:
    result = parse_item(orjson.dumps({"item_id": "a", "properties": {"x": "y" * 100}}), max_bytes=64)
    assert isinstance(result, Rejection) and result.reason == RejectReason.OVERSIZED


def test_committed_json_schema_matches_the_model() -> None:
    assert orjson.loads(SCHEMA_PATH.read_bytes()) == json_schema(), (
        "regenerate: python -m streamrec.shared.catalog"
    )


def test_the_serving_catalog_knows_availability_and_categories_and_round_trips() -> None:
    catalog = ServingCatalog()
    catalog.apply("a", ItemRecord("a", hidden=True))
    catalog.apply("b", ItemRecord("b", categories=("shoes",), expires_at=100.0))
    catalog.apply("c", ItemRecord("c", categories=("shoes", "sale")))
    catalog.offset = 7
    assert not catalog.available("a", 0.0)
    assert catalog.available("b", 99.0) and not catalog.available("b", 100.0)
    assert catalog.available("unknown", 0.0) and catalog.categories_of("unknown") == ()
    assert catalog.unavailable(50.0) == {"a"} and catalog.unavailable(100.0) == {"a", "b"}
    assert catalog.unavailable(60.0) is catalog.unavailable(99.0)  # cached until the next expiry
    assert catalog.unavailable(10.0) == {"a"}  # and computed again for an earlier time
    assert catalog.items_in(frozenset({"sale"})) == {"c"}

    copy = ServingCatalog.decode(catalog.encode())
    assert copy.offset == 7 and copy.unavailable(100.0) == {"a", "b"}
    assert copy.categories_of("c") == ("shoes", "sale") and len(copy) == 3

    catalog.apply("a", None)  # a tombstone: unrestricted again
    catalog.apply("c", ItemRecord("c"))  # a later message replaces the earlier one
    assert catalog.available("a", 0.0) and catalog.categories_of("c") == ()
    with pytest.raises(ValueError, match="not a serving catalog"):
        ServingCatalog.decode(b"{}")


def test_catalog_changes_round_trip_without_properties() -> None:
    record = ItemRecord("sku-1", True, ("x",), 5.0, {"title": "kept in ingest only"})
    change = CatalogChange.from_json(CatalogChange("sku-1", record).to_json())
    assert change.record == ItemRecord("sku-1", True, ("x",), 5.0, {})
    assert CatalogChange.from_json(CatalogChange("sku-1", None).to_json()) == CatalogChange("sku-1", None)


def test_popular_items_read_messages_without_categories() -> None:
    old = orjson.dumps({"items": [["a", 2.0]], "generated_at": 1.0})
    assert PopularItems.from_json(old) == PopularItems([("a", 2.0)], 1.0, {})
    new = PopularItems([("a", 2.0)], 1.0, {"shoes": [("b", 1.0)]})
    assert PopularItems.from_json(new.to_json()) == new


def test_category_popularity_publishes_changed_lists_of_available_items_only() -> None:
    catalog = ServingCatalog()
    for item, categories in {"a": ("shoes",), "b": ("shoes", "sale"), "c": ("sale",)}.items():
        catalog.apply(item, ItemRecord(item, categories=categories))
    popularity = CategoryPopularity(size=2, half_life_hours=1.0)
    for item, score in (("a", 3.0), ("b", 2.0), ("c", 1.0)):
        popularity.update(item, ItemPopularity(score=score, as_of=0.0, count=1), catalog.categories_of(item))

    lists = popularity.lists_to_publish(catalog, now=0.0, as_of=0.0)
    assert {c: [i for i, _ in items] for c, items in lists.items()} == {
        "shoes": ["a", "b"],
        "sale": ["b", "c"],
    }
    assert popularity.lists_to_publish(catalog, now=0.0, as_of=0.0) == {}  # nothing changed
    assert set(popularity.lists_to_publish(catalog, now=0.0, as_of=0.0, everything=True)) == {"shoes", "sale"}

    catalog.apply("a", ItemRecord("a", hidden=True, categories=("shoes",)))
    assert {
        c: [i for i, _ in items] for c, items in popularity.lists_to_publish(catalog, 0.0, 0.0).items()
    } == {"shoes": ["b"]}
    catalog.apply("b", ItemRecord("b", categories=("sale",)))  # b left shoes
    assert [i for i, _ in popularity.lists_to_publish(catalog, 0.0, 0.0)["shoes"]] == []


def test_many_categories_are_split_over_messages() -> None:
    lists = {f"c{n}": [("a", 1.0)] for n in range(CATEGORIES_PER_MESSAGE * 2 + 1)}
    parts = chunks(lists)
    assert [len(part) for part in parts] == [CATEGORIES_PER_MESSAGE, CATEGORIES_PER_MESSAGE, 1]
    assert {name for part in parts for name in part} == set(lists)
    assert chunks({}) == []
