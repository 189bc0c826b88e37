"""Popularity debiasing: re-rank a model's candidates so fewer of them are the most popular items.

One implementation, used by the scorer (``STREAMREC_SCORER_POPULARITY_PENALTY``, on the top_k
candidates the ONNX graph returns) and by ``streamrec evaluate --popularity-penalties`` (on the same
number of candidates of the full ranking), so the offline trade-off curve measures the served knob.

The re-ranked score of a candidate is ``score - penalty * log(1 + popularity)``, popularity being
the item's number of training interactions: with penalty 0 nothing changes; each unit of penalty
costs an item one unit of model score per e-fold of popularity. Only the order of the candidates
changes (and which of them make the cut when fewer are kept): an item the model did not put among
its candidates never comes back.
"""

from __future__ import annotations

import numpy as np


def popularity_terms(popularity: np.ndarray) -> np.ndarray:
    """``log(1 + popularity)`` as float32, the per-item amount one unit of penalty subtracts.

    ``popularity`` holds non-negative interaction counts, indexed like the candidates' item indices.
    """
    counts = np.asarray(popularity, dtype=np.float64)
    if counts.ndim != 1 or not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("popularity must be a 1-d array of finite, non-negative counts")
    return np.log1p(counts).astype(np.float32)


def popularity_rerank(
    scores: np.ndarray, items: np.ndarray, terms: np.ndarray, penalty: float, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidates by ``score - penalty * terms[item]`` and keep the best ``n`` per row.

    ``scores`` [B, C] (best first, -inf marks a masked candidate) and ``items`` [B, C] (indices into
    ``terms``, see :func:`popularity_terms`) are one model call's candidates. Returns (re-ranked
    scores, items), [B, min(n, C)], best first; equal re-ranked scores keep the candidates' order
    and masked candidates stay masked at the end. The returned scores are the re-ranked ones, so a
    list stays sorted by its scores. ``penalty`` must be >= 0; with 0 the inputs come back cut to
    ``n`` columns, unchanged.
    """
    if penalty < 0:
        raise ValueError(f"penalty must be >= 0, got {penalty}")
    if penalty == 0:
        return scores[:, :n], items[:, :n]
    adjusted = scores - np.asarray(penalty, dtype=scores.dtype) * terms[items].astype(
        scores.dtype, copy=False
    )
    order = np.argsort(-adjusted, axis=1, kind="stable")[:, :n]
    return np.take_along_axis(adjusted, order, axis=1), np.take_along_axis(items, order, axis=1)
