"""Keeps the similar-item lists in Redis current (see :mod:`streamrec.scorer.similar_items`): the
served model's, written in chunks by the scorer that owns partition 0 of the user features, and
the co-occurrence lists of the items the model does not know, written periodically by every scorer."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import numpy as np

from streamrec.scorer.model_runtime import ServedModel
from streamrec.scorer.redis_writer import RedisWriter
from streamrec.scorer.similar_items import FALLBACK_WRITE_SECONDS, CoOccurrence, SimilarListWriter
from streamrec.shared.logs import get_logger
from streamrec.shared.redis_keys import RedisKeys

log = get_logger(__name__)


class SimilarLists:
    """The served model's similar lists being written, and the co-occurrence counts."""

    def __init__(self, writer: RedisWriter, keys: RedisKeys, top_n: int) -> None:
        self.writer = writer
        self.keys = keys
        self.top_n = top_n
        self.model_lists: SimilarListWriter | None = None  # the served model's lists, being written
        self.cooccurrence = CoOccurrence()  # neighbours of the items the served model does not know
        self.next_fallback_write = time.monotonic() + FALLBACK_WRITE_SECONDS

    def start(self, model: ServedModel, embeddings: np.ndarray | None) -> None:
        """Prepare the new model's similar lists (written by :meth:`step`), unless it has no
        embeddings or another scorer already wrote them all."""
        self.cooccurrence.forget_known(model.index_of.__contains__)
        self.model_lists = None
        if embeddings is None:
            log.info(
                "model has no item embeddings: similar items from co-occurrence only",
                extra={"model_version": model.version},
            )
            return
        done = self.writer.get("read the similar lists' version", self.keys.similar_model)
        if done is not None and done.decode() == model.version:
            return
        self.model_lists = SimilarListWriter(
            model.version, model.vocabulary, embeddings, self.top_n, model.list_encoder.encode
        )

    def observe(self, histories: Iterable[list[str]], model: ServedModel | None) -> None:
        """Count the neighbours of items the served model does not know (their fallback lists)."""
        known = model.index_of.__contains__ if model is not None else (lambda _item: False)
        for history in histories:
            self.cooccurrence.observe(history, known)

    def due(self, assigned: set[int]) -> bool:
        """Whether the served model's lists are waiting to be written by this scorer."""
        # One scorer computes the lists: the owner of partition 0 (a rebalance hands the rest over).
        lists = self.model_lists
        return lists is not None and not lists.done and 0 in assigned

    def seconds_until_due(self, assigned: set[int]) -> float:
        """0 while similar lists are waiting to be written by this scorer, else infinite."""
        return 0.0 if self.due(assigned) else math.inf

    def step(self, assigned: set[int]) -> None:
        """Write one chunk of the served model's similar lists; unknown items' lists periodically."""
        now = time.monotonic()
        if now >= self.next_fallback_write:
            self.next_fallback_write = now + FALLBACK_WRITE_SECONDS
            fallback = self.cooccurrence.lists(self.top_n, time.time())
            self._write({item: cached.encode() for item, cached in fallback.items()})
        if not self.due(assigned):
            return
        lists = self.model_lists
        assert lists is not None
        self._write(lists.step(time.time()))
        if lists.done:
            self.writer.set("write the similar lists' version", self.keys.similar_model, lists.version)
            log.info(
                "similar items written",
                extra={
                    "model_version": lists.version,
                    "items": len(lists.vocabulary),
                    "seconds": round(time.monotonic() - lists.started, 2),
                },
            )

    def _write(self, values: dict[str, bytes]) -> None:
        """SET the items' similar lists in one pipeline (no TTL: overwritten in place)."""
        keyed: dict[str, bytes | str] = {self.keys.similar(item): value for item, value in values.items()}
        self.writer.set_many(f"write {len(values)} similar-item lists", keyed)
