"""The offline protocol of ../shared/EVALUATION.md: split fingerprints, MostPop reference values,
ranking rules, and that every model family runs through both phases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamrec.shared.datasets import load_interactions
from streamrec.shared.settings import Settings
from streamrec.trainer.evaluation.baselines import EASE, ItemKNN, MostPop
from streamrec.trainer.evaluation.models import TrainerModel, model_inputs
from streamrec.trainer.evaluation.protocol import (
    Split,
    UserSequences,
    evaluate_phase,
    metrics_from_ranks,
    split_interactions,
    target_ranks,
)
from streamrec.trainer.evaluation.report import format_table
from streamrec.trainer.evaluation.runner import EvaluationError, evaluate, evaluate_model
from streamrec.trainer.evaluation.similar import (
    cooccurrence_similarity,
    embedding_similarity,
    previous_items,
    similar_metrics,
)

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
ML_LATEST_SMALL = DATASETS / "ml-latest-small" / "ratings.csv"
ML_100K = DATASETS / "ml-100k" / "u.data"

# From ../shared/EVALUATION.md.
FINGERPRINTS = {
    ML_LATEST_SMALL: {
        "users": 610,
        "items": 9724,
        "train": 99_616,
        "test_sum": 15_518_668,
        "validation_sum": 14_069_363,
        "users_1_2_3": [("2012", "2492"), ("114060", "80489"), ("5048", "2424")],
    },
    ML_100K: {
        "users": 943,
        "items": 1682,
        "train": 98_114,
        "test_sum": 452_037,
        "validation_sum": 446_654,
        "users_1_2_3": [("74", "102"), ("314", "281"), ("317", "181")],
    },
}
MOSTPOP_REFERENCE = {  # test phase: HR@10, NDCG@10, HR@20, NDCG@20, MRR
    ML_100K: {"hr@10": 0.0859, "ndcg@10": 0.0439, "hr@20": 0.1262, "ndcg@20": 0.0540, "mrr": 0.0402},
    ML_LATEST_SMALL: {"hr@10": 0.0410, "ndcg@10": 0.0189, "hr@20": 0.0689, "ndcg@20": 0.0259, "mrr": 0.0181},
}


@pytest.fixture(scope="module")
def real_splits() -> dict[Path, Split]:
    return {path: split_interactions(load_interactions(path)) for path in FINGERPRINTS}


@pytest.mark.parametrize("path", list(FINGERPRINTS), ids=lambda path: path.parent.name)
def test_split_matches_the_fingerprints(real_splits: dict[Path, Split], path: Path) -> None:
    split, expected = real_splits[path], FINGERPRINTS[path]
    assert len(split.evaluated) == expected["users"]
    assert split.n_items == expected["items"]
    assert len(split.train.items) == expected["train"]
    assert split.item_ids[split.test_items].astype(np.int64).sum() == expected["test_sum"]
    assert split.item_ids[split.validation_items].astype(np.int64).sum() == expected["validation_sum"]
    for user, (validation_item, test_item) in zip(("1", "2", "3"), expected["users_1_2_3"], strict=True):
        row = int(np.searchsorted(split.evaluated, np.flatnonzero(split.user_ids == user)[0]))
        assert (split.item_ids[split.validation_items[row]], split.item_ids[split.test_items[row]]) == (
            validation_item,
            test_item,
        )


@pytest.mark.parametrize("path", list(MOSTPOP_REFERENCE), ids=lambda path: path.parent.name)
def test_mostpop_reproduces_the_reference_values(real_splits: dict[Path, Split], path: Path) -> None:
    entry, _ = evaluate_model(MostPop(), real_splits[path])
    assert {metric: round(entry[metric], 4) for metric in MOSTPOP_REFERENCE[path]} == MOSTPOP_REFERENCE[path]


def frame(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    """A load_interactions-style frame from (user, item, timestamp) rows, in file order."""
    data = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    data["value"], data["event_type"], data["row"] = np.nan, "view", np.arange(len(data))
    return data


def test_split_sorts_by_time_breaks_ties_by_row_and_keeps_short_users_in_train() -> None:
    split = split_interactions(
        frame(
            [
                ("u", "c", 5.0),  # same timestamp as "d": "c" comes first in the file, so "d" is last
                ("u", "a", 1.0),
                ("u", "d", 5.0),
                ("u", "b", 2.0),
                ("short", "a", 0.0),
                ("short", "z", 9.0),  # only ever in a short user's train: still in the universe
            ]
        )
    )
    ids = split.item_ids
    assert list(split.user_ids[split.evaluated]) == ["u"]
    assert ids[split.validation_items].tolist() == ["c"] and ids[split.test_items].tolist() == ["d"]
    train_of = {user: ids[split.train.take([i]).items].tolist() for i, user in enumerate(split.user_ids)}
    assert train_of == {"u": ["a", "b"], "short": ["a", "z"]}
    assert sorted(ids) == ["a", "b", "c", "d", "z"]
    test = split.test()
    assert ids[test.histories().items].tolist() == ["a", "b", "c"]  # test history = train + validation


def test_ranking_counts_ties_against_the_target_and_skips_excluded_items() -> None:
    scores = np.array(
        [
            [5.0, 3.0, 3.0, 1.0, 9.0],  # target 1 ties with 2; item 4 (9.0) is excluded
            [1.0, 2.0, 3.0, 4.0, 5.0],  # target 4 is the best candidate
            [1.0, 2.0, 3.0, 4.0, 5.0],  # target 0 is excluded: a miss
            [np.nan, 0.0, 0.0, 0.0, 0.0],  # everything tied with the target
        ]
    )
    excluded = UserSequences(np.array([4, 0]), np.array([0, 1, 1, 2, 2]), n_items=5)
    ranks = target_ranks(scores, np.array([1, 4, 0, 2]), excluded)
    assert ranks.tolist() == [3.0, 1.0, math.inf, 4.0]  # row 0: items 0, 1, 2 score >= 3.0
    metrics = metrics_from_ranks(ranks)
    assert metrics["hr@10"] == pytest.approx(3 / 4)
    assert metrics["ndcg@10"] == pytest.approx((1 / math.log2(4) + 1 + 0 + 1 / math.log2(5)) / 4)
    assert metrics["mrr"] == pytest.approx((1 / 3 + 1 + 0 + 1 / 4) / 4)


def test_constant_scores_get_the_worst_rank() -> None:
    ranks = target_ranks(np.zeros((1, 6)), np.array([3]), UserSequences(np.array([0]), np.array([0, 1]), 6))
    assert ranks.tolist() == [5.0]  # 5 candidates, all tied


def test_test_phase_excludes_the_validation_item() -> None:
    split = split_interactions(frame([("u", "a", 1.0), ("u", "b", 2.0), ("u", "c", 3.0), ("v", "c", 1.0)]))
    test = split.test()
    # An oracle that loves the validation item "b" most, then the test item "c": "b" is excluded.
    prefer = {"a": 0.0, "b": 10.0, "c": 5.0}
    weights = np.array([prefer[item] for item in split.item_ids])
    metrics = evaluate_phase(lambda histories: np.tile(weights, (histories.n_users, 1)), test)
    assert metrics["mrr"] == 1.0


@pytest.fixture(scope="module")
def sample_split() -> Split:
    """The first 150 users of ml-100k: real structure, small enough for every model."""
    events = load_interactions(ML_100K)
    return split_interactions(events[events["user_id"].astype(int) <= 150].reset_index(drop=True))


def ease_reference(fitting: UserSequences, l2: float, histories: UserSequences) -> np.ndarray:
    """EASE straight from the paper: B = I - P / diag(P), P = (X^T X + l2 I)^-1 over all items."""
    matrix = fitting.matrix().toarray()
    precision = np.linalg.inv(matrix.T @ matrix + l2 * np.eye(fitting.n_items))
    weights = np.eye(fitting.n_items) - precision / np.diag(precision)[None, :]
    return histories.matrix().toarray() @ weights


@pytest.mark.parametrize("copies", [1, 20], ids=["woodbury", "primal"])
def test_ease_matches_the_closed_form(sample_split: Split, copies: int) -> None:
    # 150 users < ~1,400 items takes the Woodbury form; every user 20 times takes the primal one.
    fitting = sample_split.validation().fitting
    fitting = fitting.take(np.tile(np.arange(fitting.n_users), copies))
    histories = fitting.take(np.arange(20))
    model = EASE(l2=100.0)
    model.fit(fitting)
    assert (model.dual is not None) == (copies == 1)
    candidates = histories.matrix().toarray() == 0  # history items' scores are never ranked
    assert np.allclose(
        model.score(histories)[candidates], ease_reference(fitting, 100.0, histories)[candidates]
    )


@pytest.mark.parametrize("model", [ItemKNN(), EASE(), MostPop()], ids=lambda model: model.name)
def test_classical_models_run_both_phases(sample_split: Split, model: ItemKNN | EASE | MostPop) -> None:
    entry, tuning = evaluate_model(model, sample_split)
    assert set(tuning["params"]) == set(model.grid()[0])
    assert 0.0 <= entry["ndcg@10"] <= entry["hr@10"] <= entry["hr@20"] <= 1.0
    assert entry["params"] > 0
    if model.name != "mostpop":  # collaborative filtering beats popularity on real data
        mostpop, _ = evaluate_model(MostPop(), sample_split)
        assert tuning["validation"]["ndcg@10"] > 0 and entry["mrr"] > mostpop["mrr"]


def test_item_knn_keeps_the_most_similar_neighbours() -> None:
    # Users: {0, 1}, {0, 1}, {0, 2}: item 1 is closer to 0 than item 2 is.
    fitting = UserSequences(np.array([0, 1, 0, 1, 0, 2]), np.array([0, 2, 4, 6]), n_items=3)
    model = ItemKNN(neighbours=1, shrink=0.0)
    model.fit(fitting)
    similarity = model.similarity.toarray()
    assert similarity[1, 0] == pytest.approx(2 / math.sqrt(3 * 2)) and similarity[2, 0] == 0.0
    assert np.count_nonzero(similarity, axis=0).tolist() == [1, 1, 1] and np.all(np.diag(similarity) == 0)


def tiny_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path,
        "model": "mf",
        "embedding_dim": 16,
        "max_seq_len": 8,
        "epochs": 6,
        "patience": 2,
        "batch_size": 256,
        "learning_rate": 0.02,
    }
    return Settings(**(values | overrides))  # type: ignore[arg-type]


def chain_events(users: int = 60, items: int = 30, length: int = 8) -> pd.DataFrame:
    """User u walks items u, u+1, … (mod items): learnable next-item structure, tiny."""
    rows = [
        (f"u{user}", f"i{(user + step) % items}", float(step))
        for user in range(users)
        for step in range(length)
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_trainer_model_tunes_epochs_on_validation_and_refits_that_many(tmp_path: Path) -> None:
    events = chain_events()
    sample_split = split_interactions(
        events.assign(value=np.nan, event_type="view", row=np.arange(len(events)))
    )
    model = TrainerModel("mf", tiny_settings(tmp_path))
    validation = sample_split.validation()
    tuning = model.tune(validation)
    best = tuning.params["epochs"]
    # The trainer's own early-stopping metric is the protocol's validation NDCG@10.
    assert tuning.validation["ndcg@10"] == pytest.approx(max(tuning.curve), abs=1e-9)
    assert tuning.curve.index(max(tuning.curve)) + 1 == best
    model.fit(sample_split.test().fitting)
    assert model.epochs == best and model.n_params() > 0
    scores = model.score(validation.histories())
    assert scores.shape == (len(validation.users), sample_split.n_items)


def test_model_inputs_are_the_last_items_left_padded() -> None:
    sequences = UserSequences(np.array([4, 5, 6, 7]), np.array([0, 0, 1, 4]), n_items=8)
    assert model_inputs(sequences, 2).tolist() == [[0, 0], [0, 5], [7, 8]]  # index = item + 1


def test_evaluate_returns_the_report_and_plots(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    chain_events().to_csv(path, index=False)
    plot = tmp_path / "report.png"
    result = evaluate(path, ["mostpop", "mf"], tiny_settings(tmp_path), plot, penalties=[0.0, 1.0])
    assert [entry["name"] for entry in result["models"]] == ["mostpop", "mf"]
    assert [entry["default"] for entry in result["models"]] == [False, True]
    assert set(result["models"][1]) == {
        "name", "default", "ndcg@10", "hr@10", "ndcg@20", "hr@20", "mrr", "train_seconds", "params",
        "coverage@10", "arp@10", "tail@10", "ndcg@10 short", "ndcg@10 medium", "ndcg@10 long", "debias",
    }  # fmt: skip
    mf = result["models"][1]
    assert 10 / 30 <= mf["coverage@10"] <= 1.0  # at least one full list of 10 of the 30 items
    assert [point["penalty"] for point in mf["debias"]] == [0.0, 1.0]
    assert mf["debias"][0]["ndcg@10"] == pytest.approx(mf["ndcg@10"], abs=1e-9)  # penalty 0 = the model
    assert result["debias"] == {"candidates": 50, "penalties": [0.0, 1.0]}
    assert result["bias"]["head_items"] == 6 and sum(result["bias"]["history_users"]) == 60
    json.dumps(result, allow_nan=False)
    assert plot.stat().st_size > 0
    table = format_table(result)
    assert "mf *" in table and "mostpop" in table
    assert "COV@10" in table and "popularity penalty" in table
    assert [row["name"] for row in result["similar"]] == ["mf", "item-knn cosine"]
    assert "similar items" in table and "item-knn cosine" in table
    with pytest.raises(EvaluationError, match="unknown model"):
        evaluate(path, ["nope"], tiny_settings(tmp_path), None)
    with pytest.raises(EvaluationError, match="penalties"):
        evaluate(path, ["mostpop"], tiny_settings(tmp_path), None, penalties=[-1.0])


def test_the_default_model_learns_order_where_popularity_cannot(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    chain_events().to_csv(path, index=False)  # every item equally popular; the next item is fixed
    settings = Settings(data_dir=tmp_path, embedding_dim=16, max_seq_len=8, epochs=8)  # default model
    result = evaluate(path, ["mostpop", settings.model], settings, None)
    mostpop, default = result["models"]
    assert default["default"] and default["name"] == "sasrec"
    assert default["ndcg@10"] > 0.8 > mostpop["ndcg@10"] + 0.5


def test_similar_items_rank_the_test_item_among_the_previous_items_neighbours() -> None:
    # Users walk i0 -> i1 -> i2 (validation i1, test i2) or i3 -> i4 -> i5 (validation i4, test i5).
    rows = [
        (f"u{user}", f"i{start + step}", float(step)) for user, start in ((0, 0), (1, 3)) for step in range(3)
    ]
    split = split_interactions(frame(rows))
    test = split.test()
    assert previous_items(test).tolist() == [1, 4]
    # Item 2 is item 1's nearest; item 5 is item 4's second nearest (after 3).
    vectors = np.array([[0.9, 0.1], [1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.1, 1.0], [1.0, 1.0]])
    metrics = similar_metrics(embedding_similarity(vectors), test)
    assert metrics["mrr"] == pytest.approx((1 / 1 + 1 / 2) / 2)
    assert metrics["hr@10"] == 1.0
    # Item-kNN: items seen by the same users are the nearest; the previous item is never its own.
    knn = cooccurrence_similarity(test.fitting)(np.array([1]))
    assert knn[0, 0] == pytest.approx(1.0) and knn[0, 3] == 0.0
    assert similar_metrics(cooccurrence_similarity(test.fitting), test)["hr@10"] == 1.0
