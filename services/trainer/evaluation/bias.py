"""Popularity bias and coverage of the test top-10 lists, NDCG@10 by history length, and the
trade-off of the scorer's popularity penalty.

Everything is measured on the test phase, from the same full-ranking scores that give the
protocol's NDCG (docs/evaluation.md states the definitions):

- *popularity* of an item: its number of interactions in the test phase's fitting data (train +
  validation, repeats counted), what the test model was fitted on;
- a user's *list*: the top 10 of the full ranking, history excluded, by score (ties: lower item
  index first);
- ``coverage@10``: distinct items over all users' lists / size of the item universe;
- ``arp@10``: mean popularity of a list's items, averaged over users;
- *head*: the ⌈20 %⌉ most popular items (ties: lower item index, i.e. earlier in the file, first);
  *long tail*: every other item; ``tail@10``: share of a list's items in the long tail, averaged
  over users;
- *history thirds*: users by their number of fitting interactions: short ≤ c1 < medium ≤ c2 <
  long, c1 and c2 the lower 1/3 and 2/3 quantiles of the evaluated users' counts; NDCG@10 is
  averaged over each group's users (from the protocol's ranks);
- *debias curve*: the top ``STREAMREC_TOP_N`` candidates (what the served graph returns: its top_k
  is the trainer's top_n) re-ranked by :func:`streamrec.shared.debias.popularity_rerank`, the
  scorer's own function, for each penalty and cut to 10; NDCG@10 and HR@10 of the test item within that list, and the bias metrics above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamrec.shared.debias import popularity_rerank, popularity_terms
from streamrec.trainer.evaluation.protocol import (
    Phase,
    ScoreFunction,
    UserSequences,
    scored_blocks,
    target_ranks,
)

TOP = 10  # list length the bias metrics describe
HEAD_SHARE = 0.2  # the most popular fifth of the items is the head; the rest is the long tail
HISTORY_GROUPS = ("short", "medium", "long")
BIAS_METRICS = ("coverage@10", "arp@10", "tail@10")
HISTORY_METRICS = tuple(f"ndcg@10 {group}" for group in HISTORY_GROUPS)


def item_popularity(fitting: UserSequences) -> np.ndarray:
    """Interactions per item in ``fitting`` (repeats counted), int64 [n_items]."""
    return np.bincount(fitting.items, minlength=fitting.n_items).astype(np.int64)


def head_items(popularity: np.ndarray, share: float = HEAD_SHARE) -> np.ndarray:
    """Bool [n_items]: the ⌈share × n_items⌉ most popular items (ties: lower index first)."""
    n_head = math.ceil(share * len(popularity))
    order = np.lexsort((np.arange(len(popularity)), -popularity))  # by popularity desc, then index
    head = np.zeros(len(popularity), dtype=bool)
    head[order[:n_head]] = True
    return head


def history_groups(lengths: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Each user's history third (0 short, 1 medium, 2 long) and the cut points (c1, c2): short
    <= c1 < medium <= c2 < long, c1 and c2 the lower 1/3 and 2/3 quantiles of ``lengths``."""
    if len(lengths) == 0:
        return np.zeros(0, dtype=np.int64), (0, 0)
    c1 = int(np.quantile(lengths, 1 / 3, method="lower"))
    c2 = int(np.quantile(lengths, 2 / 3, method="lower"))
    return (lengths > c1).astype(np.int64) + (lengths > c2), (c1, c2)


def top_candidates(scores: np.ndarray, excluded: UserSequences, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``n`` best items, the row's ``excluded`` items left out, as the served graph
    returns them: (scores [B, n'], items int64 [B, n']), best first, n' = min(n, n_items); ties by
    lower index; excluded items only where too few remain, with score -inf (masked)."""
    dtype = np.result_type(scores.dtype, np.float32)  # float32 models stay float32, as served
    scores = np.nan_to_num(np.array(scores, dtype=dtype), nan=-np.inf, posinf=np.finfo(dtype).max)
    scores[excluded.owners(), excluded.items] = -np.inf
    n = min(n, scores.shape[1])
    best = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    best_scores = np.take_along_axis(scores, best, axis=1)
    order = np.lexsort((best, -best_scores), axis=1)
    return np.take_along_axis(best_scores, order, axis=1), np.take_along_axis(best, order, axis=1)


def phase_candidates(score: ScoreFunction, phase: Phase, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The protocol's ranks of every evaluated user's target and their top ``n`` candidates, from
    one scoring pass: (ranks [U], candidate scores [U, n'], candidate items [U, n'])."""
    ranks, best_scores, best_items = [], [], []
    for rows, histories, scores in scored_blocks(score, phase):
        ranks.append(target_ranks(scores, phase.targets[rows], histories))
        block_scores, block_items = top_candidates(scores, histories, n)
        best_scores.append(block_scores)
        best_items.append(block_items)
    if not ranks:
        width = min(n, phase.fitting.n_items)
        return np.zeros(0), np.zeros((0, width), dtype=np.float32), np.zeros((0, width), dtype=np.int64)
    return np.concatenate(ranks), np.concatenate(best_scores), np.concatenate(best_items)


def lists_of(scores: np.ndarray, items: np.ndarray, k: int = TOP) -> np.ndarray:
    """The first ``k`` candidates of each row as a list, int64 [B, k'], -1 where masked (-inf)."""
    return np.where(np.isfinite(scores[:, :k]), items[:, :k], -1)


def list_metrics(lists: np.ndarray, popularity: np.ndarray, head: np.ndarray) -> dict[str, float]:
    """coverage@10, arp@10 and tail@10 of ``lists`` [U, 10] (-1 = empty slot, ignored)."""
    filled = lists >= 0
    safe = np.where(filled, lists, 0)
    per_list = np.maximum(filled.sum(axis=1), 1)
    has_items = filled.any(axis=1)
    arp = (np.where(filled, popularity[safe], 0).sum(axis=1) / per_list)[has_items]
    tail = (np.where(filled, ~head[safe], False).sum(axis=1) / per_list)[has_items]
    return {
        "coverage@10": len(np.unique(lists[filled])) / len(popularity),
        "arp@10": float(arp.mean()) if len(arp) else float("nan"),
        "tail@10": float(tail.mean()) if len(tail) else float("nan"),
    }


def list_hits(lists: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """NDCG@10 and HR@10 of each user's target within their list [U, 10], averaged over users."""
    if len(lists) == 0:
        return {"ndcg@10": float("nan"), "hr@10": float("nan")}
    hit = lists == targets[:, None]
    gains = 1.0 / np.log2(np.arange(lists.shape[1]) + 2.0)
    return {"ndcg@10": float((hit * gains).sum(axis=1).mean()), "hr@10": float(hit.any(axis=1).mean())}


@dataclass(frozen=True)
class BiasReference:
    """What the bias metrics of one test phase are measured against (see the module docstring)."""

    popularity: np.ndarray  # int64 [n_items]
    head: np.ndarray  # bool [n_items]
    groups: np.ndarray  # int64 [n_eval]: history third of each evaluated user
    cuts: tuple[int, int]
    targets: np.ndarray  # int64 [n_eval]

    @classmethod
    def of(cls, phase: Phase) -> BiasReference:
        """The reference of ``phase`` (the test phase)."""
        popularity = item_popularity(phase.fitting)
        groups, cuts = history_groups(phase.histories().lengths)
        return cls(popularity, head_items(popularity), groups, cuts, phase.targets)

    def describe(self) -> dict[str, Any]:
        """The JSON form: head size and its lowest popularity, history cut points and group sizes."""
        return {
            "head_items": int(self.head.sum()),
            "head_min_popularity": int(self.popularity[self.head].min()) if self.head.any() else 0,
            "history_cuts": list(self.cuts),
            "history_users": np.bincount(self.groups, minlength=len(HISTORY_GROUPS)).tolist(),
        }


def bias_metrics(
    ranks: np.ndarray, scores: np.ndarray, items: np.ndarray, reference: BiasReference
) -> dict[str, float | None]:
    """coverage@10, arp@10, tail@10 of the top-10 lists and NDCG@10 per history third (from the
    protocol's ``ranks``); None for an empty third (JSON has no NaN)."""
    result = list_metrics(lists_of(scores, items), reference.popularity, reference.head)
    gains = np.where(ranks <= TOP, 1.0 / np.log2(np.where(ranks <= TOP, ranks, 1.0) + 1.0), 0.0)
    for index, name in enumerate(HISTORY_METRICS):
        members = reference.groups == index
        result[name] = float(gains[members].mean()) if members.any() else None
    return result


def debias_curve(
    scores: np.ndarray, items: np.ndarray, reference: BiasReference, penalties: list[float]
) -> list[dict[str, float]]:
    """For each penalty: the candidates re-ranked as the scorer does, cut to 10, and their
    ``{"penalty", "ndcg@10", "hr@10", "coverage@10", "arp@10", "tail@10"}``."""
    terms = popularity_terms(reference.popularity)
    points = []
    for penalty in penalties:
        ranked_scores, ranked_items = popularity_rerank(scores, items, terms, penalty, TOP)
        lists = lists_of(ranked_scores, ranked_items)
        points.append(
            {
                "penalty": penalty,
                **list_hits(lists, reference.targets),
                **list_metrics(lists, reference.popularity, reference.head),
            }
        )
    return points
