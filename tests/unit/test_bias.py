"""Bias metrics of the evaluation and the popularity re-rank shared with the scorer, on tiny
hand-made inputs whose answers can be worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamrec.shared.debias import popularity_rerank, popularity_terms
from streamrec.trainer.evaluation.bias import (
    BiasReference,
    bias_metrics,
    debias_curve,
    head_items,
    history_groups,
    item_popularity,
    list_hits,
    list_metrics,
    lists_of,
    top_candidates,
)
from streamrec.trainer.evaluation.protocol import UserSequences, metrics_from_ranks, target_ranks


def test_penalty_zero_returns_the_candidates_unchanged() -> None:
    scores = np.array([[3.0, 2.0, -np.inf]], dtype=np.float32)
    items = np.array([[4, 1, 0]])
    ranked_scores, ranked_items = popularity_rerank(scores, items, popularity_terms(np.arange(5)), 0.0, 2)
    assert ranked_scores.tobytes() == scores[:, :2].tobytes() and ranked_items.tolist() == [[4, 1]]


def test_the_re_rank_subtracts_penalty_times_log_popularity() -> None:
    # ln(1 + popularity): item 0 -> 2, items 1 and 2 -> 0.
    terms = popularity_terms(np.array([math.e**2 - 1, 0, 0]))
    scores = np.array([[3.0, 2.5, 1.0], [3.0, 2.5, -np.inf]])
    items = np.array([[0, 1, 2], [0, 1, 2]])
    ranked_scores, ranked_items = popularity_rerank(scores, items, terms, 1.0, 3)
    # Row 0: 1.0, 2.5, 1.0 -> item 1, then items 0 and 2 tied: candidate order kept.
    assert ranked_items.tolist() == [[1, 0, 2], [1, 0, 2]]
    assert ranked_scores[0].tolist() == pytest.approx([2.5, 1.0, 1.0])
    assert ranked_scores[1, 2] == -np.inf  # a masked candidate stays masked, last
    _, best_two = popularity_rerank(scores, items, terms, 0.2, 2)  # 2.6 vs 2.5: item 0 stays first
    assert best_two.tolist() == [[0, 1], [0, 1]]


def test_the_re_rank_refuses_negative_penalties_and_popularity() -> None:
    with pytest.raises(ValueError):
        popularity_rerank(np.zeros((1, 1)), np.zeros((1, 1), dtype=np.int64), np.zeros(1), -0.1, 1)
    with pytest.raises(ValueError):
        popularity_terms(np.array([1, -1]))


def test_popularity_counts_repeats_and_the_head_is_the_top_fifth_ties_by_index() -> None:
    # Items 0..9; item 3 three times, items 1 and 5 twice, the others at most once.
    fitting = UserSequences(np.array([3, 3, 1, 5, 3, 1, 5, 0]), np.array([0, 4, 8]), n_items=10)
    popularity = item_popularity(fitting)
    assert popularity.tolist() == [1, 2, 0, 3, 0, 2, 0, 0, 0, 0]
    # ceil(0.2 * 10) = 2 head items: item 3, then item 1 (tied with 5, lower index first).
    assert np.flatnonzero(head_items(popularity)).tolist() == [1, 3]
    assert head_items(np.ones(11)).sum() == 3  # ceil(2.2)


def test_history_thirds_cut_at_the_lower_quantiles() -> None:
    lengths = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9])
    groups, cuts = history_groups(lengths)
    assert cuts == (3, 6)
    assert groups.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # Many users at a cut point all fall on its lower side.
    groups, cuts = history_groups(np.array([5, 5, 5, 5, 9, 20]))
    assert cuts == (5, 5) and groups.tolist() == [0, 0, 0, 0, 2, 2]


def test_list_metrics_by_hand() -> None:
    popularity = np.array([10, 4, 2, 0, 0])  # head (ceil(0.2 * 5) = 1 item): item 0
    head = head_items(popularity)
    lists = np.array([[0, 1], [2, -1]])  # the second list has one empty slot
    metrics = list_metrics(lists, popularity, head)
    assert metrics["coverage@10"] == pytest.approx(3 / 5)
    assert metrics["arp@10"] == pytest.approx(((10 + 4) / 2 + 2 / 1) / 2)
    assert metrics["tail@10"] == pytest.approx((1 / 2 + 1 / 1) / 2)


def test_list_hits_by_hand() -> None:
    lists = np.array([[5, 6, 7], [1, 2, 3], [4, 8, 9]])
    hits = list_hits(lists, np.array([6, 0, 4]))
    assert hits["hr@10"] == pytest.approx(2 / 3)
    assert hits["ndcg@10"] == pytest.approx((1 / math.log2(3) + 0 + 1) / 3)


def test_top_candidates_exclude_history_break_ties_by_index_and_mask_what_runs_out() -> None:
    scores = np.array([[0.5, 0.9, 0.9, 0.1], [1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    excluded = UserSequences(np.array([1, 0, 1, 2]), np.array([0, 1, 4]), n_items=4)
    best_scores, best_items = top_candidates(scores, excluded, 3)
    assert best_items[0].tolist() == [2, 0, 3]  # item 1 excluded; item 2 kept its score 0.9
    assert best_scores.dtype == np.float32  # as the served graph's scores
    assert best_items[1, 0] == 3 and np.isneginf(best_scores[1, 1:]).all()  # only item 3 allowed
    assert lists_of(best_scores, best_items).tolist() == [[2, 0, 3], [3, -1, -1]]
    _, tied = top_candidates(
        np.array([[1.0, 2.0, 2.0, 2.0]]), UserSequences(np.zeros(0, np.int64), np.zeros(2, np.int64), 4), 2
    )
    assert tied.tolist() == [[1, 2]]


def test_the_curve_at_penalty_zero_is_the_protocols_ndcg_and_the_penalty_adds_tail_items() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 40, 30
    fitting = UserSequences(rng.integers(0, n_items, 200), np.arange(0, 201, 5), n_items)
    popularity = item_popularity(fitting)
    # Scores favour popular items, plus noise (no ties); each user's target is drawn at random.
    scores = np.log1p(popularity)[None, :] + rng.normal(0, 0.5, (n_users, n_items))
    targets = rng.integers(0, n_items, n_users)
    ranks = target_ranks(scores, targets, fitting)
    best_scores, best_items = top_candidates(scores, fitting, 20)
    groups, cuts = history_groups(fitting.lengths)
    reference = BiasReference(popularity, head_items(popularity), groups, cuts, targets)
    off, strong = debias_curve(best_scores, best_items, reference, [0.0, 3.0])
    assert off["ndcg@10"] == pytest.approx(metrics_from_ranks(ranks)["ndcg@10"])
    assert off["hr@10"] == pytest.approx(metrics_from_ranks(ranks)["hr@10"])
    unbiased = bias_metrics(ranks, best_scores, best_items, reference)
    assert {key: off[key] for key in ("coverage@10", "arp@10", "tail@10")} == pytest.approx(
        {key: unbiased[key] for key in ("coverage@10", "arp@10", "tail@10")}
    )
    assert strong["tail@10"] > off["tail@10"] and strong["arp@10"] < off["arp@10"]


def test_ndcg_by_history_third_averages_each_groups_users() -> None:
    ranks = np.array([1.0, np.inf, 3.0, 1.0])
    groups = np.array([0, 0, 2, 2])  # nobody in the medium third
    popularity = np.array([1, 1, 1])
    reference = BiasReference(popularity, head_items(popularity), groups, (2, 2), np.zeros(4, dtype=np.int64))
    lists = np.zeros((4, 1), dtype=np.int64)
    metrics = bias_metrics(ranks, np.zeros((4, 1)), lists, reference)
    assert metrics["ndcg@10 short"] == pytest.approx(0.5)
    assert metrics["ndcg@10 medium"] is None
    assert metrics["ndcg@10 long"] == pytest.approx((1 / 2 + 1) / 2)
