"""Classical baselines: MostPop, ItemKNN (item-item cosine) and EASE (closed-form linear autoencoder).

All three read a user as the *set* of their history items (the binary user x item matrix); the
order of the history does not matter to them. Hyper-parameters are chosen on validation from the
small grids below (see :meth:`Recommender.tune`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from streamrec.trainer.evaluation.protocol import UserSequences
from streamrec.trainer.evaluation.recommender import Recommender

# Target items whose similarity column is computed at once: bounds ItemKNN's memory to
# n_items x SIMILARITY_BLOCK floats, whatever the catalogue size.
SIMILARITY_BLOCK = 1024


class MostPop(Recommender):
    """Everyone gets the same ranking: items by the number of distinct users who interacted."""

    name = "mostpop"

    def __init__(self) -> None:
        self.popularity: np.ndarray | None = None

    def fit(self, fitting: UserSequences) -> None:
        """Count distinct users per item."""
        self.popularity = np.asarray(fitting.matrix().sum(axis=0), dtype=np.float64).ravel()

    def score(self, histories: UserSequences) -> np.ndarray:
        """The popularity vector, repeated for every history."""
        assert self.popularity is not None, "fit() first"
        return np.broadcast_to(self.popularity, (histories.n_users, len(self.popularity)))

    def n_params(self) -> int:
        """One count per item."""
        return 0 if self.popularity is None else len(self.popularity)


class ItemKNN(Recommender):
    """Item-item collaborative filtering with shrunk cosine similarity and a top-k neighbourhood.

    ``sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i|) * sqrt(|U_j|) + shrink)`` over the users U who
    interacted with each item; every target item j keeps only its ``neighbours`` most similar items.
    ``score(u, j) = sum of sim(i, j) over the items i in u's history``.
    """

    name = "itemknn"
    NEIGHBOURS = (10, 20, 50, 100, 200, 500, 1000)
    SHRINKS = (0.0, 10.0, 100.0)

    def __init__(self, neighbours: int = 100, shrink: float = 10.0) -> None:
        self.neighbours = neighbours
        self.shrink = shrink
        self.similarity: sp.csr_matrix | None = None  # [n_items, n_items]; column j = j's neighbours

    def grid(self) -> list[dict[str, Any]]:
        """Every neighbourhood size x shrinkage."""
        return [{"neighbours": k, "shrink": s} for s in self.SHRINKS for k in self.NEIGHBOURS]

    def fitted_settings(self, fitting: UserSequences) -> Iterator[dict[str, Any]]:
        """The grid, computing the neighbourhoods once per shrinkage and cutting them per size."""
        for shrink in self.SHRINKS:
            ranked = ranked_neighbours(fitting, shrink, max(self.NEIGHBOURS))
            for neighbours in self.NEIGHBOURS:
                self.set_params(neighbours=neighbours, shrink=shrink)
                self.similarity = similarity_matrix(*ranked, neighbours)
                yield {"neighbours": neighbours, "shrink": shrink}

    def fit(self, fitting: UserSequences) -> None:
        """Compute the pruned similarity matrix."""
        self.similarity = similarity_matrix(
            *ranked_neighbours(fitting, self.shrink, self.neighbours), self.neighbours
        )

    def score(self, histories: UserSequences) -> np.ndarray:
        """Sum of the history items' similarity columns."""
        assert self.similarity is not None, "fit() first"
        return (histories.matrix(np.float32) @ self.similarity).toarray()

    def n_params(self) -> int:
        """Stored (non-zero) similarities."""
        return 0 if self.similarity is None else int(self.similarity.nnz)


def ranked_neighbours(fitting: UserSequences, shrink: float, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Each item's ``keep`` most similar items, best first: (items, similarities), both [keep, n_items].

    Column j lists the neighbours of target item j (shrunk cosine, see :class:`ItemKNN`). Computed
    one block of target items at a time.
    """
    users_items = fitting.matrix(np.float32).tocsc()
    items_users = users_items.T.tocsr()
    norms = np.sqrt(np.asarray(users_items.sum(axis=0), dtype=np.float32).ravel())
    n_items = fitting.n_items
    keep = max(0, min(keep, n_items - 1))
    neighbours = np.zeros((keep, n_items), dtype=np.int64)
    similarities = np.zeros((keep, n_items), dtype=np.float32)
    if keep == 0:
        return neighbours, similarities
    for start in range(0, n_items, SIMILARITY_BLOCK):
        block = np.arange(start, min(start + SIMILARITY_BLOCK, n_items))
        overlap = (items_users @ users_items[:, block]).toarray()  # [n_items, block]
        denominator = norms[:, None] * norms[None, block] + shrink
        similarity = np.divide(overlap, denominator, out=np.zeros_like(overlap), where=denominator > 0)
        similarity[block, np.arange(len(block))] = 0.0  # an item is not its own neighbour
        top = np.argpartition(-similarity, keep - 1, axis=0)[:keep]  # [keep, block], unordered
        top_values = np.take_along_axis(similarity, top, axis=0)
        best_first = np.argsort(-top_values, axis=0, kind="stable")
        neighbours[:, block] = np.take_along_axis(top, best_first, axis=0)
        similarities[:, block] = np.take_along_axis(top_values, best_first, axis=0)
    return neighbours, similarities


def similarity_matrix(neighbours: np.ndarray, similarities: np.ndarray, keep: int) -> sp.csr_matrix:
    """Sparse [n_items, n_items] similarity keeping the first ``keep`` ranked neighbours of each column.

    Zero similarities are dropped: they are no neighbours (and would only add zeros to scores).
    """
    n_items = neighbours.shape[1]
    neighbours, similarities = neighbours[:keep], similarities[:keep]
    columns = np.broadcast_to(np.arange(n_items), neighbours.shape)
    positive = similarities > 0
    return sp.csr_matrix(
        (similarities[positive], (neighbours[positive], columns[positive])), shape=(n_items, n_items)
    )


class EASE(Recommender):
    """EASE (Steck, 2019): item-item weights B = I - P / diag(P), P = (X^T X + l2 I)^-1, diag(B) = 0.

    Only items with at least one fitting interaction take part (an item without any has B = 0 in
    its row and column, so leaving it out changes no score). With fewer users than items, P is
    applied through the Woodbury identity ``P = (I - X^T (X X^T + l2 I)^-1 X) / l2``: a users x
    users inverse instead of an items x items one (610^3 instead of 9,724^3 on ml-latest-small),
    the same scores in exact arithmetic. Float64 throughout: the matrices stay small that way.
    """

    name = "ease"
    L2 = (10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)

    def __init__(self, l2: float = 500.0) -> None:
        self.l2 = l2
        self.n_items = 0
        self.active: np.ndarray = np.zeros(0, dtype=np.int64)  # item indices with fitting data
        self.weights: np.ndarray | None = None  # primal: B [active, active]
        # dual (Woodbury): X [users, active], (X X^T + l2 I)^-1 [users, users], diag(P) [active]
        self.dual: tuple[sp.csr_matrix, np.ndarray, np.ndarray] | None = None

    def grid(self) -> list[dict[str, Any]]:
        """The L2 penalties to try."""
        return [{"l2": value} for value in self.L2]

    def fit(self, fitting: UserSequences) -> None:
        """Solve for B (or its Woodbury factors, whichever inverse is smaller)."""
        matrix = fitting.matrix(np.float64)
        self.n_items = fitting.n_items
        self.active = np.flatnonzero(np.asarray(matrix.sum(axis=0)).ravel() > 0)
        matrix = matrix[:, self.active].tocsr()
        n_users, n_active = matrix.shape
        self.weights, self.dual = None, None
        if n_users < n_active:
            kernel = (matrix @ matrix.T).toarray()
            kernel[np.diag_indices(n_users)] += self.l2
            kernel_inverse = scipy.linalg.inv(kernel, check_finite=False)
            kernel_inverse = (kernel_inverse + kernel_inverse.T) / 2  # exact symmetry against drift
            # diag(P)_j = (1 - x_j^T K^-1 x_j) / l2, x_j = column j of X
            quadratic = np.asarray(matrix.multiply(matrix.T.dot(kernel_inverse).T).sum(axis=0)).ravel()
            self.dual = (matrix, kernel_inverse, (1.0 - quadratic) / self.l2)
        else:
            gram = (matrix.T @ matrix).toarray()
            gram[np.diag_indices(n_active)] += self.l2
            precision = scipy.linalg.inv(gram, check_finite=False, overwrite_a=True)
            weights = -precision / np.diag(precision)[None, :]
            weights[np.diag_indices(n_active)] = 0.0
            self.weights = weights

    def score(self, histories: UserSequences) -> np.ndarray:
        """x B for each history x, as a full [users, n_items] matrix (0 for inactive items)."""
        history = histories.matrix(np.float64)[:, self.active]
        if self.weights is not None:
            active_scores = np.asarray(history @ self.weights)
        else:
            assert self.dual is not None, "fit() first"
            matrix, kernel_inverse, precision_diagonal = self.dual
            through_users = np.asarray((history @ matrix.T).todense()) @ kernel_inverse  # [B, users]
            x_precision = (history.toarray() - np.asarray(matrix.T.dot(through_users.T).T)) / self.l2
            # x B = x - (x P) / diag(P); the x term only touches history items, which are excluded.
            active_scores = history.toarray() - x_precision / precision_diagonal[None, :]
        scores = np.zeros((histories.n_users, self.n_items), dtype=np.float64)
        scores[:, self.active] = active_scores
        return scores

    def n_params(self) -> int:
        """Entries of the item-item matrix B (active items squared), whichever form computes it."""
        return len(self.active) ** 2
