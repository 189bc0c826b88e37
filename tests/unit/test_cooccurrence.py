"""The co-occurrence warm start: what counts as a pair, no leak of held-out items, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd

from streamrec.trainer.cooccurrence import cooccurrence_matrix, item_vectors
from streamrec.trainer.dataset import build_dataset


def events(sequences: dict[str, list[str]]) -> pd.DataFrame:
    rows = [
        (user, item, "view", float(t), None)
        for user, items in sequences.items()
        for t, item in enumerate(items)
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp", "value"])


def test_pairs_within_the_window_of_training_items_only() -> None:
    # u1: a b c d e -> e is u1's validation target and must not appear in any pair.
    data = build_dataset(events({"u1": ["a", "b", "c", "d", "e"], "u2": ["x", "y"]}), max_seq_len=5)
    index = {item: i for i, item in enumerate(data.vocabulary, start=1)}
    counts = cooccurrence_matrix(data, window=2).toarray()
    np.testing.assert_allclose(counts, counts.T)
    pairs = {("a", "b"), ("a", "c"), ("b", "c"), ("b", "d"), ("c", "d"), ("x", "y")}
    for first in index:
        for second in index:
            expected = np.log1p(1) if (first, second) in pairs or (second, first) in pairs else 0.0
            assert counts[index[first], index[second]] == expected, (first, second)
    assert counts[0].sum() == 0  # padding co-occurs with nothing


def test_item_vectors_follow_cooccurrence_and_are_deterministic() -> None:
    rng = np.random.default_rng(1)
    # Two groups of items that never mix: vectors within a group are closer than across groups.
    sequences = {f"u{n}": [f"{'ab'[n % 2]}{k}" for k in rng.permutation(10)] for n in range(40)}
    data = build_dataset(events(sequences), max_seq_len=5)
    vectors = item_vectors(data, dim=4, std=0.02, seed=3)
    assert vectors.shape == (data.n_items + 1, 4) and vectors.dtype == np.float32
    assert not vectors[0].any()
    np.testing.assert_allclose(vectors[1:].std(), 0.02, rtol=0.5)
    np.testing.assert_array_equal(vectors, item_vectors(data, dim=4, std=0.02, seed=3))
    group = np.array([item[0] for item in data.vocabulary])
    unit = vectors[1:] / np.linalg.norm(vectors[1:], axis=1, keepdims=True)
    cosine = unit @ unit.T
    same = group[:, None] == group[None, :]
    assert cosine[same & ~np.eye(len(group), dtype=bool)].mean() > cosine[~same].mean() + 0.5
