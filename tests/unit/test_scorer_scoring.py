"""The scorer's scoring and model switching, no server and no ONNX file: which users get the model's
list and which the popular fallback, unavailable items left out; which version is handed to the loop.

Scoring with a real ONNX model: tests/unit/test_model_runtime.py.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from streamrec.scorer import model_switch
from streamrec.scorer.catalog_replica import CatalogReplica
from streamrec.scorer.model_switch import PROMOTED_CHECK_SECONDS, ModelSwitcher
from streamrec.scorer.scoring import ListScorer
from streamrec.shared.cached_list import CachedList
from streamrec.shared.catalog import ItemRecord
from streamrec.shared.messages import PopularItems
from streamrec.shared.registry import ModelIntegrityError

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


class Registry:
    """Stands in for ModelRegistry: PROMOTED and the promotion history."""

    root = "models"

    def __init__(self, promoted: str | None, stack: list[str]) -> None:
        self.promoted, self.stack = promoted, stack

    def promoted_version(self) -> str | None:
        return self.promoted

    def promotion_stack(self) -> list[str]:
        return self.stack


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The versions ServedModel.load was asked for; versions starting with "bad" fail verification."""
    asked: list[str] = []

    def load(registry: Registry, version: str, threads: int, popularity_penalty: float) -> Any:
        asked.append(version)
        if version.startswith("bad"):
            raise ModelIntegrityError(f"model {version}: checksum mismatch")
        model = RankedModel(version, ["i1"])
        model.manifest = type("Manifest", (), {"n_items": 1})()  # type: ignore[attr-defined]
        return model

    monkeypatch.setattr(model_switch.ServedModel, "load", load)
    monkeypatch.setattr(model_switch, "load_item_embeddings", lambda registry, version, n_items: None)
    return asked


def test_a_refused_version_is_remembered_and_the_current_one_not_reloaded(loads: list[str]) -> None:
    switcher = ModelSwitcher(Registry(None, []), threads=1, popularity_penalty=0.0)  # type: ignore[arg-type]
    assert switcher.load("bad-2", "v1", reason="announcement") is None
    assert switcher.load("bad-2", "v1", reason="announcement") is None
    assert switcher.load("v1", "v1", reason="announcement") is None
    swap = switcher.load("v3", "v1", reason="announcement")
    assert swap is not None and (swap.model.version, swap.previous, swap.reason) == (
        "v3",
        "v1",
        "announcement",
    )
    assert loads == ["bad-2", "v3"] and switcher.refused == {"bad-2"}


def test_a_refused_promoted_version_at_start_falls_back_to_the_newest_earlier_promoted_one(
    loads: list[str],
) -> None:
    switcher = ModelSwitcher(Registry("bad-3", ["v1", "bad-2", "bad-3"]), threads=1, popularity_penalty=0.0)  # type: ignore[arg-type]
    swap = switcher.at_startup()
    assert swap is not None and swap.model.version == "v1" and loads == ["bad-3", "bad-2", "v1"]
    assert ModelSwitcher(Registry(None, []), threads=1, popularity_penalty=0.0).at_startup() is None  # type: ignore[arg-type]


def test_promoted_is_followed_when_it_changes_at_most_every_interval(loads: list[str]) -> None:
    registry = Registry("v1", ["v1"])
    switcher = ModelSwitcher(registry, threads=1, popularity_penalty=0.0)  # type: ignore[arg-type]
    assert switcher.at_startup() is not None
    registry.promoted = "v2"
    assert switcher.promoted_changed("v1") is not None  # the first check is due at once
    registry.promoted = "v3"
    assert switcher.promoted_changed("v2") is None  # checked again only after the interval
    switcher.next_promoted_check = time.monotonic() - PROMOTED_CHECK_SECONDS
    swap = switcher.promoted_changed("v2")
    assert swap is not None and swap.model.version == "v3" and loads == ["v1", "v2", "v3"]
