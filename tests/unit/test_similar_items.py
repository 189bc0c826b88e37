"""Similar items: nearest neighbours in the item embeddings, and co-occurrence for unknown items."""

from __future__ import annotations

import numpy as np

from streamrec.scorer.similar_items import CoOccurrence, SimilarListWriter, nearest_items, normalised
from streamrec.shared.cached_list import CachedList, RankedListEncoder


def brute_force(embeddings: np.ndarray, item: int, k: int) -> list[int]:
    unit = normalised(embeddings)
    cosine = unit @ unit[item]
    cosine[item] = -np.inf
    return (np.argsort(-cosine, kind="stable")[:k] + 1).tolist()


def test_nearest_items_are_the_highest_cosine_without_the_item_itself() -> None:
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(50, 8)).astype(np.float32)
    items, scores = nearest_items(normalised(embeddings), slice(10, 20), k=5)
    assert items.shape == scores.shape == (10, 5)
    for row, item in enumerate(range(10, 20)):
        assert items[row].tolist() == brute_force(embeddings, item, 5)
        assert item + 1 not in items[row].tolist()
        assert (np.diff(scores[row]) <= 0).all()  # best first
    assert np.all(scores <= 1.0 + 1e-6)


def test_nearest_items_of_a_tiny_catalogue() -> None:
    embeddings = np.eye(2, dtype=np.float32)
    items, _ = nearest_items(normalised(embeddings), slice(0, 2), k=10)
    assert items.tolist() == [[2], [1]]  # only the other item; a zero-length list for 1 item
    items, _ = nearest_items(normalised(embeddings[:1]), slice(0, 1), k=10)
    assert items.shape == (1, 0)


def test_the_writer_covers_every_item_in_chunks() -> None:
    vocabulary = [str(i) for i in range(1, 11)]
    embeddings = np.random.default_rng(1).normal(size=(10, 4)).astype(np.float32)
    writer = SimilarListWriter("v1", vocabulary, embeddings, 3, RankedListEncoder(vocabulary).encode)
    values: dict[str, bytes] = {}
    while not writer.done:
        values |= writer.step(now=1.0, chunk=4)
    assert set(values) == set(vocabulary)
    cached = CachedList.decode(values["4"])
    assert cached.model_version == "v1" and cached.source == "personal"
    assert [item for item, _ in cached.items] == [vocabulary[i - 1] for i in brute_force(embeddings, 3, 3)]


def test_cooccurrence_counts_only_unknown_items_near_the_latest() -> None:
    known = {"a", "b", "c"}.__contains__
    counts = CoOccurrence()
    counts.observe(["a", "b", "new"], known)  # new is the latest: counted with a and b
    counts.observe(["a", "b", "new", "c"], known)  # c latest: new (unknown) gets c
    counts.observe(["x", "a", "b", "c", "new"], known)  # x is beyond the window
    lists = counts.lists(k=10, now=5.0)
    assert set(lists) == {"new"}
    assert dict(lists["new"].items) == {"a": 2.0, "b": 2.0, "c": 2.0}
    assert lists["new"].source == "fallback" and lists["new"].model_version is None
    assert counts.lists(k=10, now=6.0) == {}  # nothing changed since
    counts.forget_known({"new"}.__contains__)
    assert len(counts) == 0


def test_cooccurrence_is_bounded() -> None:
    counts = CoOccurrence(capacity=3, neighbours=2)
    for n in range(10):
        counts.observe(["a", f"new{n}"], lambda _item: False)
        for other in range(10):
            counts.observe([f"o{other}", "hub"], lambda _item: False)
    assert len(counts) == 3
    assert all(len(c) <= 4 for c in counts._counts.values())
