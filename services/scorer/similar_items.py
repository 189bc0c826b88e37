"""Similar items: every item's nearest items, written to Redis for ``RedisKeys.similar(item)``.

Two sources, one key per item (a :class:`~streamrec.shared.cached_list.CachedList`):

- ``personal`` — the served model's item embeddings (``item_embeddings.npy`` of its version):
  the ``k`` items of highest cosine similarity, itself excluded, with the model version. When a
  model is swapped in, :class:`SimilarListWriter` computes them in chunks of at most
  :data:`CHUNK_ITEMS` items (and :data:`CHUNK_FLOATS` similarities) between real-time batches,
  so a step pauses the event path for milliseconds, and overwrites each item's list in place,
  so readers see the old model's list until the new one replaces it (no gap). When the last
  chunk is written, ``RedisKeys.similar_model`` names the version.
- ``fallback`` — for items the served model does not know (new in the catalogue, or no model
  yet): :class:`CoOccurrence` counts, in users' histories, the items seen within
  :data:`WINDOW` positions of them, and their lists are written every
  :data:`FALLBACK_WRITE_SECONDS`.

Readers that find neither fall back to the popular items of the item's categories (client side).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from streamrec.shared.cached_list import CachedList
from streamrec.shared.logs import get_logger
from streamrec.shared.model_contract import ITEM_EMBEDDINGS_FILE
from streamrec.shared.registry import ModelIntegrityError, ModelRegistry

log = get_logger(__name__)

CHUNK_ITEMS = 256  # items whose neighbours one step computes and writes, at most
CHUNK_FLOATS = 1 << 20  # similarities one step holds ([chunk, n_items]: 4 MB, a few ms of work)
WINDOW = 3  # co-occurrence: the latest item and the items at most this many positions before it
COOCCURRENCE_ITEMS = 20_000  # unknown items whose neighbours are counted (least recent evicted)
COOCCURRENCE_NEIGHBOURS = 200  # counts kept per item (pruned to the most frequent beyond that)
FALLBACK_WRITE_SECONDS = 10.0  # unknown items' lists changed since are written this often


def load_item_embeddings(registry: ModelRegistry, version: str, n_items: int) -> np.ndarray | None:
    """The version's item embeddings, float32 [n_items, dim], or None if it has none (older versions).

    The file's sha256 is checked by ``registry.verify`` with the others; raises
    ModelIntegrityError if its shape does not match the vocabulary or it holds non-finite values."""
    path = registry.path(version) / ITEM_EMBEDDINGS_FILE
    if ITEM_EMBEDDINGS_FILE not in registry.manifest(version).files:
        return None
    try:
        embeddings = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelIntegrityError(f"model {version}: {ITEM_EMBEDDINGS_FILE} is unreadable: {exc}") from None
    if embeddings.ndim != 2 or embeddings.shape[0] != n_items:
        raise ModelIntegrityError(
            f"model {version}: {ITEM_EMBEDDINGS_FILE} has shape {embeddings.shape}, expected [{n_items}, dim]"
        )
    if not np.isfinite(embeddings).all():
        raise ModelIntegrityError(f"model {version}: {ITEM_EMBEDDINGS_FILE} holds non-finite values")
    return embeddings.astype(np.float32, copy=False)


def normalised(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), so a dot product is the cosine."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.where(norms > 0, norms, 1.0)


def nearest_items(unit: np.ndarray, rows: slice, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest items of items ``rows`` (0-based rows of ``unit``, unit-length vectors):
    (items int64 [B, k'], scores float32 [B, k']) with 1-based item indices, best first, the item
    itself never among them; k' = min(k, n_items - 1)."""
    n_items = len(unit)
    k = min(k, n_items - 1)
    start = rows.start or 0
    block = unit[rows]
    if k < 1 or len(block) == 0:
        return np.zeros((len(block), 0), dtype=np.int64), np.zeros((len(block), 0), dtype=np.float32)
    cosine = block @ unit.T  # [B, n_items]
    own = np.arange(len(block))
    cosine[own, start + own] = -np.inf
    top = np.argpartition(cosine, n_items - k, axis=1)[:, n_items - k :]  # the k largest, unordered
    top_scores = np.take_along_axis(cosine, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    items = np.take_along_axis(top, order, axis=1)
    return items.astype(np.int64) + 1, np.take_along_axis(top_scores, order, axis=1).astype(np.float32)


class SimilarListWriter:
    """Computes one model's similar lists in chunks: :meth:`step` gives the next chunk's Redis values."""

    def __init__(
        self,
        version: str,
        vocabulary: list[str],
        embeddings: np.ndarray,
        k: int,
        encode: Callable[[np.ndarray, np.ndarray, str, float], list[bytes]],
    ) -> None:
        self.version = version
        self.vocabulary = vocabulary
        self.k = k
        self._unit = normalised(embeddings)
        self._encode = encode  # the model's RankedListEncoder.encode: bulk binary values
        self.next_row = 0
        self.started = time.monotonic()

    @property
    def done(self) -> bool:
        """True once every item's list was handed out."""
        return self.next_row >= len(self.vocabulary)

    def step(self, now: float, chunk: int | None = None) -> dict[str, bytes]:
        """The next ``chunk`` items' values (default: see :data:`CHUNK_FLOATS`): item id -> encoded
        CachedList (source "personal")."""
        n_items = len(self.vocabulary)
        chunk = chunk or max(1, min(CHUNK_ITEMS, CHUNK_FLOATS // n_items))
        rows = slice(self.next_row, min(self.next_row + chunk, n_items))
        self.next_row = rows.stop
        items, scores = nearest_items(self._unit, rows, self.k)
        values = self._encode(items, scores, self.version, now)
        return dict(zip(self.vocabulary[rows], values, strict=True))


class CoOccurrence:
    """Bounded counts of the items seen near items the model does not know, in users' histories.

    Each history is counted at its latest item only (the scorer sees a user's whole history after
    every batch; counting all of it each time would count old pairs again): the pairs of the latest
    item with the :data:`WINDOW` items before it, both ways, where one side is unknown to the model.
    """

    def __init__(self, capacity: int = COOCCURRENCE_ITEMS, neighbours: int = COOCCURRENCE_NEIGHBOURS) -> None:
        self.capacity = capacity
        self.neighbours = neighbours
        self._counts: dict[str, Counter[str]] = {}  # insertion order = least recently counted first
        self.dirty: set[str] = set()

    def observe(self, history: list[str], known: Callable[[str], bool]) -> None:
        """Count the latest item of ``history`` with the items just before it."""
        if len(history) < 2:
            return
        latest = history[-1]
        for other in history[-1 - WINDOW : -1]:
            if other == latest:
                continue
            if not known(latest):
                self._add(latest, other)
            if not known(other):
                self._add(other, latest)

    def _add(self, item: str, neighbour: str) -> None:
        counts = self._counts.pop(item, None)
        if counts is None:
            counts = Counter()
            if len(self._counts) >= self.capacity:
                evicted = next(iter(self._counts))
                del self._counts[evicted]
                self.dirty.discard(evicted)
        self._counts[item] = counts  # most recently counted last
        counts[neighbour] += 1
        if len(counts) > 2 * self.neighbours:
            counts = self._counts[item] = Counter(dict(counts.most_common(self.neighbours)))
        self.dirty.add(item)

    def forget_known(self, known: Callable[[str], bool]) -> None:
        """Drop the counts of items a new model knows (their lists come from its embeddings now)."""
        for item in [item for item in self._counts if known(item)]:
            del self._counts[item]
            self.dirty.discard(item)

    def lists(self, k: int, now: float) -> dict[str, CachedList]:
        """The changed items' lists (most frequent neighbours first, source "fallback"); clears them."""
        changed = {
            item: CachedList(
                [(other, float(count)) for other, count in self._counts[item].most_common(k)],
                None,
                now,
                "fallback",
            )
            for item in self.dirty
            if item in self._counts
        }
        self.dirty.clear()
        return changed

    def __len__(self) -> int:
        return len(self._counts)
