"""The offline protocol of ../shared/EVALUATION.md: split, phases, full-ranking metrics.

Split: per user, interactions sorted by timestamp, ties by original row order (stable). A user with
>= 3 interactions gives the last one as test item and the second-to-last as validation item; all
other interactions (and every interaction of shorter users) are training data. The item universe
is every distinct item of the file.

Phases: validation fits on train and ranks for the validation item; test fits on train +
validation and ranks for the test item. In both, the history a model reads and the items excluded
from the ranking are exactly the user's fitting interactions (:attr:`Phase.fitting`).

Ranking: rank = number of candidates whose score >= the target's score (ties count against the
target). HR@K, NDCG@K (K = 10, 20) and MRR are unweighted means over the evaluated users.

Items and users are dense 0-based indices into :attr:`Split.item_ids` / :attr:`Split.user_ids`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

MIN_INTERACTIONS = 3  # fewer: the user only trains (no validation and test item)
CUTOFFS = (10, 20)
METRIC_NAMES = ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr")
# Scores [users, items] float64 values held at once while ranking: bounds memory for large catalogues.
SCORE_BLOCK_FLOATS = 1 << 24

ScoreFunction = Callable[["UserSequences"], np.ndarray]


@dataclass(frozen=True)
class UserSequences:
    """Every user's items in time order, stored flat.

    User ``u``'s items are ``items[starts[u]:starts[u + 1]]`` (item indices, oldest first).
    """

    items: np.ndarray  # int64 [n_interactions]
    starts: np.ndarray  # int64 [n_users + 1]
    n_items: int  # size of the item universe (indices 0..n_items-1)
    # float64 [n_interactions]: each interaction's value (a rating; NaN: none), for rating models.
    values: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        """Number of users (rows)."""
        return len(self.starts) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Interactions per user, int64 [n_users]."""
        return np.diff(self.starts)

    def owners(self) -> np.ndarray:
        """The user of each flat position, int64 [n_interactions]."""
        return np.repeat(np.arange(self.n_users, dtype=np.int64), self.lengths)

    def take(self, users: np.ndarray) -> UserSequences:
        """The sequences of ``users`` only, in that order (row i = users[i])."""
        users = np.asarray(users, dtype=np.int64)
        lengths = self.lengths[users]
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        positions = np.arange(starts[-1], dtype=np.int64) + np.repeat(
            self.starts[users] - starts[:-1], lengths
        )
        values = None if self.values is None else self.values[positions]
        return UserSequences(self.items[positions], starts, self.n_items, values)

    def appended(
        self, users: np.ndarray, items: np.ndarray, values: np.ndarray | None = None
    ) -> UserSequences:
        """A copy with ``items[i]`` (of value ``values[i]``, default NaN) added as the newest item
        of ``users[i]`` (users distinct)."""
        extra = np.zeros(self.n_users, dtype=np.int64)
        extra[users] = 1
        starts = np.concatenate([[0], np.cumsum(self.lengths + extra)]).astype(np.int64)
        merged = np.empty(starts[-1], dtype=np.int64)
        old_positions = np.arange(len(self.items), dtype=np.int64) + np.repeat(
            starts[:-1] - self.starts[:-1], self.lengths
        )
        merged[old_positions] = self.items
        merged[starts[np.asarray(users) + 1] - 1] = items
        merged_values = None
        if self.values is not None:
            merged_values = np.full(starts[-1], np.nan)
            merged_values[old_positions] = self.values
            merged_values[starts[np.asarray(users) + 1] - 1] = np.nan if values is None else values
        return UserSequences(merged, starts, self.n_items, merged_values)

    def matrix(self, dtype: type = np.float64) -> sp.csr_matrix:
        """Binary user x item matrix [n_users, n_items]: 1 where the user interacted with the item."""
        ones = np.ones(len(self.items), dtype=dtype)
        matrix = sp.csr_matrix((ones, (self.owners(), self.items)), shape=(self.n_users, self.n_items))
        matrix.sum_duplicates()
        matrix.data[:] = 1  # repeated interactions count once
        return matrix


@dataclass(frozen=True)
class Phase:
    """One phase of the protocol: what a model fits on, and whom it ranks for which target."""

    name: str  # "validation" or "test"
    fitting: UserSequences  # all users; each user's row is also their history and their exclusions
    users: np.ndarray  # int64 [n_eval]: evaluated users
    targets: np.ndarray  # int64 [n_eval]: the held-out item of each evaluated user

    def histories(self, users: np.ndarray | None = None) -> UserSequences:
        """Fitting sequences of the evaluated users (or of ``users``), in that order."""
        return self.fitting.take(self.users if users is None else users)


@dataclass(frozen=True)
class Split:
    """The temporal leave-last-out split of one interaction file."""

    user_ids: np.ndarray  # str [n_users], raw ids in order of first appearance
    item_ids: np.ndarray  # str [n_items], the item universe, in order of first appearance
    train: UserSequences
    evaluated: np.ndarray  # int64: users with >= MIN_INTERACTIONS interactions
    validation_items: np.ndarray  # int64 [n_eval]
    test_items: np.ndarray  # int64 [n_eval]
    validation_values: np.ndarray | None = None  # float64 [n_eval], if the file has values

    @property
    def n_items(self) -> int:
        """Size of the item universe."""
        return len(self.item_ids)

    def validation(self) -> Phase:
        """Fit on train; rank for the validation item, excluding train items."""
        return Phase("validation", self.train, self.evaluated, self.validation_items)

    def test(self) -> Phase:
        """Fit on train + validation; rank for the test item, excluding train and validation items."""
        fitting = self.train.appended(self.evaluated, self.validation_items, self.validation_values)
        return Phase("test", fitting, self.evaluated, self.test_items)


def split_interactions(frame: pd.DataFrame) -> Split:
    """Split a :func:`streamrec.shared.datasets.load_interactions` frame as the protocol says."""
    user_codes, user_ids = pd.factorize(frame["user_id"].to_numpy())
    item_codes, item_ids = pd.factorize(frame["item_id"].to_numpy())
    # Group by user, then timestamp, ties by original row (lexsort: last key is the primary one).
    order = np.lexsort((frame["row"].to_numpy(), frame["timestamp"].to_numpy(dtype=np.float64), user_codes))
    items = item_codes[order].astype(np.int64)
    lengths = np.bincount(user_codes, minlength=len(user_ids))
    ends = np.cumsum(lengths)

    evaluated = np.flatnonzero(lengths >= MIN_INTERACTIONS).astype(np.int64)
    test_positions = ends[evaluated] - 1
    validation_positions = ends[evaluated] - 2
    is_train = np.ones(len(items), dtype=bool)
    is_train[test_positions] = False
    is_train[validation_positions] = False
    train_lengths = lengths.copy()
    train_lengths[evaluated] -= 2
    values = frame["value"].to_numpy(dtype=np.float64)[order] if "value" in frame.columns else None
    train = UserSequences(
        items[is_train],
        np.concatenate([[0], np.cumsum(train_lengths)]).astype(np.int64),
        len(item_ids),
        None if values is None else values[is_train],
    )
    return Split(
        user_ids=np.asarray(user_ids, dtype=str),
        item_ids=np.asarray(item_ids, dtype=str),
        train=train,
        evaluated=evaluated,
        validation_items=items[validation_positions],
        test_items=items[test_positions],
        validation_values=None if values is None else values[validation_positions],
    )


def target_ranks(scores: np.ndarray, targets: np.ndarray, excluded: UserSequences) -> np.ndarray:
    """1-based rank of each row's target among the row's candidates, float64 [B]; inf if excluded.

    Candidates are all items minus the row's ``excluded`` items; rank = number of candidates with
    score >= the target's score (pessimistic ties). NaN scores count as -inf. An excluded target can
    never be recommended, so it gets rank inf (a miss for every metric).
    """
    scores = np.nan_to_num(np.array(scores, dtype=np.float64), nan=-np.inf, posinf=np.finfo(np.float64).max)
    rows = np.arange(len(targets))
    is_excluded_target = np.zeros(len(targets), dtype=bool)
    owners = excluded.owners()
    is_excluded_target[owners[excluded.items == targets[owners]]] = True
    target_scores = scores[rows, targets]
    scores[owners, excluded.items] = -np.inf  # excluded items are never counted above the target
    scores[rows, targets] = target_scores  # the target is always its own candidate: rank >= 1
    ranks = (scores >= target_scores[:, None]).sum(axis=1).astype(np.float64)
    ranks[is_excluded_target] = np.inf
    return ranks


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """HR@K, NDCG@K (K in CUTOFFS) and MRR, unweighted means over the ranks' users."""
    if len(ranks) == 0:
        return dict.fromkeys(METRIC_NAMES, float("nan"))
    result: dict[str, float] = {}
    for k in CUTOFFS:
        hit = ranks <= k
        result[f"hr@{k}"] = float(hit.mean())
        result[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(np.where(hit, ranks, 1.0) + 1.0), 0.0).mean())
    result["mrr"] = float((1.0 / ranks).mean())  # 1 / inf = 0
    return {name: result[name] for name in METRIC_NAMES}


def scored_blocks(score: ScoreFunction, phase: Phase) -> Iterator[tuple[slice, UserSequences, np.ndarray]]:
    """``score`` of the evaluated users in blocks (see SCORE_BLOCK_FLOATS): yields (rows of
    ``phase.users``, their histories, scores [rows, n_items])."""
    block = max(1, SCORE_BLOCK_FLOATS // max(1, phase.fitting.n_items))
    for start in range(0, len(phase.users), block):
        rows = slice(start, start + block)
        users = phase.users[rows]
        histories = phase.histories(users)
        scores = score(histories)
        expected = (len(users), phase.fitting.n_items)
        if scores.shape != expected:
            raise ValueError(f"score() returned shape {scores.shape}, expected {expected}")
        yield rows, histories, scores


def phase_ranks(score: ScoreFunction, phase: Phase) -> np.ndarray:
    """Rank of every evaluated user's target under ``score``, in blocks of users (see module doc)."""
    ranks = [
        target_ranks(scores, phase.targets[rows], histories)
        for rows, histories, scores in scored_blocks(score, phase)
    ]
    return np.concatenate(ranks) if ranks else np.zeros(0)


def evaluate_phase(score: ScoreFunction, phase: Phase) -> dict[str, float]:
    """The protocol's metrics of ``score`` (histories -> scores [users, items]) on ``phase``."""
    return metrics_from_ranks(phase_ranks(score, phase))
