"""The scorer's scoring, no server and no ONNX file: which users get the model's list and which the
popular fallback, unavailable items left out.

Scoring with a real ONNX model: tests/unit/test_model_runtime.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamrec.scorer.catalog_replica import CatalogReplica
from streamrec.scorer.scoring import ListScorer
from streamrec.shared.catalog import ItemRecord
from streamrec.shared.contracts import CachedList, PopularItems

NOW = 1_700_000_000.0


class RankedModel:
    """Stands in for ServedModel: knows ``vocabulary`` and ranks it in order, minus the history."""

    def __init__(self, version: str, vocabulary: list[str]) -> None:
        self.version = version
        self.index_of = {item: i for i, item in enumerate(vocabulary, start=1)}
        self.blocked: list[Any] = []

    def known_items(self, history: list[str]) -> list[int]:
        return [self.index_of[item] for item in history if item in self.index_of]

    def indices(self, items: Any) -> np.ndarray:
        return np.array(
            sorted(self.index_of[item] for item in items if item in self.index_of), dtype=np.int64
        )

    def recommend(self, histories: list[list[str]], k: int, blocked: np.ndarray | None = None) -> list[Any]:
        self.blocked.append(blocked)
        return [[(item, 1.0) for item in self.index_of if item not in history][:k] for history in histories]


def decoded(value: bytes) -> tuple[list[str], str | None, str]:
    cached = CachedList.decode(value)
    return [item for item, _ in cached.items], cached.model_version, cached.source


def test_without_a_model_users_get_the_popular_list_minus_their_items_and_the_unavailable() -> None:
    catalog = CatalogReplica()
    catalog.catalog.apply("p2", ItemRecord("p2", hidden=True))
    scorer = ListScorer(catalog, top_n=2, value_format="json")
    histories = {"u1": ["p1"], "u2": []}
    assert scorer.score(histories, None, None, NOW).values == {}  # nothing to serve yet: left out
    popular = PopularItems([("p1", 9.0), ("p2", 8.0), ("p3", 7.0), ("p4", 6.0)])
    scored = scorer.score(histories, None, popular, NOW)
    assert (scored.personal, scored.fallback) == (0, 2)
    assert decoded(scored.values["u1"]) == (["p3", "p4"], None, "fallback")
    assert decoded(scored.values["u2"]) == (["p1", "p3"], None, "fallback")


def test_the_model_scores_users_with_an_item_it_knows_and_never_ranks_an_unavailable_one() -> None:
    catalog = CatalogReplica()
    scorer = ListScorer(catalog, top_n=2, value_format="json")
    model = RankedModel("m-1", ["i1", "i2", "i3", "i4"])
    popular = PopularItems([("p1", 9.0)])
    scored = scorer.score({"known": ["i1"], "new": ["x9"]}, model, popular, NOW)  # type: ignore[arg-type]
    assert (scored.personal, scored.fallback) == (1, 1)
    assert decoded(scored.values["known"]) == (["i2", "i3"], "m-1", "personal")
    assert decoded(scored.values["new"]) == (["p1"], None, "fallback")  # no signal for the model
    # Without a popular list, the model serves every user.
    assert scorer.score({"new": ["x9"]}, model, None, NOW).personal == 1  # type: ignore[arg-type]
    assert model.blocked == [None, None]
    catalog.catalog.apply("i3", ItemRecord("i3", hidden=True))
    scorer.score({"known": ["i1"]}, model, None, NOW)  # type: ignore[arg-type]
    assert model.blocked[-1].tolist() == [3]
