"""Similar items under the protocol: does an item's nearest-items list hold what users take next?

For every evaluated user of the test phase, the *previous* item is the last one of their fitting
sequence (the validation item) and the target is the held-out test item. The target's rank among
all items ordered by their similarity to the previous item (the previous item itself left out,
nothing else: a similar-items list does not know the user) gives HR@10, NDCG@10 and MRR, as
:func:`.protocol.metrics_from_ranks` computes them.

Two similarities are compared:

- a trained model's item embeddings (what the scorer serves for ``RedisKeys.similar``): cosine;
- item-kNN: cosine between the items' user vectors of the fitting data (binary user x item).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from streamrec.trainer.evaluation.protocol import Phase, UserSequences, metrics_from_ranks, target_ranks

SIMILAR_METRICS = ("hr@10", "ndcg@10", "mrr")
BLOCK_USERS = 1024  # previous items whose similarity rows are held at once

Similarity = Callable[[np.ndarray], np.ndarray]  # item indices [B] -> similarity rows [B, n_items]


def previous_items(phase: Phase) -> np.ndarray:
    """Each evaluated user's last fitting item (users with an empty fitting sequence get -1)."""
    histories = phase.histories()
    ends = histories.starts[1:]
    has_items = histories.lengths > 0
    previous = np.full(len(phase.users), -1, dtype=np.int64)
    previous[has_items] = histories.items[ends[has_items] - 1]
    return previous


def embedding_similarity(vectors: np.ndarray) -> Similarity:
    """Cosine similarity rows of items over ``vectors`` [n_items, dim]: items [B] -> [B, n_items]."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1.0)
    return lambda items: unit[items] @ unit.T


def cooccurrence_similarity(fitting: UserSequences) -> Similarity:
    """Item-kNN: cosine between items' user vectors (binary user x item of ``fitting``)."""
    by_item = sp.csr_matrix(fitting.matrix().T)  # [n_items, n_users]
    norms = np.sqrt(np.asarray(by_item.multiply(by_item).sum(axis=1)).ravel())
    safe = np.where(norms > 0, norms, 1.0)

    def rows(items: np.ndarray) -> np.ndarray:
        overlap = (by_item[items] @ by_item.T).toarray()
        return overlap / safe[items, None] / safe[None, :]

    return rows


def similar_metrics(similarity: Similarity, phase: Phase) -> dict[str, float]:
    """HR@10, NDCG@10 and MRR of the test item among the previous item's most similar items."""
    previous = previous_items(phase)
    usable = np.flatnonzero(previous >= 0)
    ranks = []
    for start in range(0, len(usable), BLOCK_USERS):
        rows = usable[start : start + BLOCK_USERS]
        scores = similarity(previous[rows])
        # The previous item is the only exclusion: its own list never holds it.
        excluded = UserSequences(
            previous[rows], np.arange(len(rows) + 1, dtype=np.int64), phase.fitting.n_items
        )
        ranks.append(target_ranks(scores, phase.targets[rows], excluded))
    metrics = metrics_from_ranks(np.concatenate(ranks) if ranks else np.zeros(0))
    return {name: metrics[name] for name in SIMILAR_METRICS}
