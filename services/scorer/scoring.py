"""Scoring, without I/O: users' histories and the served model in, their lists (Redis values) out.

A user gets the model's list (``personal``) or, with no model yet or no item of the history the
model knows, the popular list minus the user's items (``fallback``); never an item the serving
catalog holds unavailable. A user with neither is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamrec.scorer.catalog_replica import CatalogReplica
from streamrec.scorer.model_runtime import ServedModel
from streamrec.shared.cached_list import CachedList
from streamrec.shared.messages import PopularItems


@dataclass(frozen=True, slots=True)
class ScoredLists:
    """Users' new lists, encoded as Redis values, and how many came from each source."""

    values: dict[str, bytes]  # user id -> value
    personal: int
    fallback: int


class ListScorer:
    """Turns histories into encoded lists with what is served: the model, the popular list, the catalog."""

    def __init__(self, catalog: CatalogReplica, top_n: int, value_format: str) -> None:
        self.catalog = catalog
        self.top_n = top_n
        self.value_format = value_format  # "binary" or "json" (STREAMREC_RECS_FORMAT)
        self._blocked: tuple[str, frozenset[str], np.ndarray] | None = None  # model version, items, indices

    def score(
        self,
        histories: dict[str, list[str]],
        model: ServedModel | None,
        popular: PopularItems | None,
        now: float,
    ) -> ScoredLists:
        """A list per user: the model's, or popular minus the user's items. Users with neither are left out."""
        top_n, value_format = self.top_n, self.value_format
        blocked = None if model is None else self._blocked_indices(model, now)
        values: dict[str, bytes] = {}
        personal: list[str] = []
        for user, history in histories.items():
            # A history of only items the model never saw carries no signal for it: the live
            # popular list is a better guess than the model's generic ranking.
            if model is not None and (popular is None or model.known_items(history)):
                personal.append(user)
            elif popular is not None:
                values[user] = self._popular_without(popular, history, now).encode(value_format)
        fallback = len(values)
        if model is not None and personal:
            inputs = [histories[user] for user in personal]
            if value_format == "binary":  # encoded from the graph's arrays, without a list per item
                encoded = model.recommend_encoded(inputs, top_n, now, blocked)
            else:
                ranked = model.recommend(inputs, k=top_n, blocked=blocked)
                encoded = [
                    CachedList(items, model.version, now, "personal").encode(value_format) for items in ranked
                ]
            values.update(zip(personal, encoded, strict=True))
        return ScoredLists(values, len(personal), fallback)

    def _popular_without(self, popular: PopularItems, history: list[str], now: float) -> CachedList:
        seen = set(history) | self.catalog.unavailable(now)
        items = [(item, score) for item, score in popular.items if item not in seen]
        return CachedList(items[: self.top_n], None, now, "fallback")

    def _blocked_indices(self, model: ServedModel, now: float) -> np.ndarray | None:
        """The model's indices of the items unavailable now (None if there are none), cached."""
        unavailable = self.catalog.unavailable(now)
        if not unavailable:
            return None
        cached = self._blocked
        if cached is None or cached[0] != model.version or cached[1] is not unavailable:
            cached = self._blocked = (model.version, unavailable, model.indices(unavailable))
        return cached[2] if len(cached[2]) else None
