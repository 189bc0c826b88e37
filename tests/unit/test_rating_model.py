"""rating-mf: the servable rating model, its training loop, its export and its quality gate."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from streamrec.shared.model_contract import PADDING_INDEX
from streamrec.shared.registry import PROMOTED, REJECTED, ModelRegistry
from streamrec.shared.settings import Settings
from streamrec.trainer.cycle import run_training_cycle
from streamrec.trainer.dataset import build_dataset
from streamrec.trainer.evaluation.models import sequence_dataset
from streamrec.trainer.evaluation.protocol import split_interactions
from streamrec.trainer.evaluation.runner import DEFAULT_MODELS, MODELS, EvaluationError, evaluate
from streamrec.trainer.export import check_parity, export_model
from streamrec.trainer.gate import holdout_ratings
from streamrec.trainer.model import RatingMF
from streamrec.trainer.train import train
from streamrec.trainer.train_rating import predict_ratings, rating_errors, rating_examples


def rated_events(users: int = 120, items: int = 30, per_user: int = 15, seed: int = 0) -> pd.DataFrame:
    """Ratings with structure a history can reveal: each user likes one of two item groups (and
    picks items mostly from it), every item has a quality of its own; some events are unrated."""
    rng = np.random.default_rng(seed)
    quality = rng.normal(0, 0.5, items)
    rows = []
    for user in range(users):
        group = user % 2
        liked = np.flatnonzero(np.arange(items) % 2 == group)
        chosen = np.where(
            rng.random(per_user) < 0.7, rng.choice(liked, per_user), rng.integers(0, items, per_user)
        )
        for step, item in enumerate(chosen):
            rating = 3.0 + quality[item] + (1.0 if item % 2 == group else -1.0) + rng.normal(0, 0.3)
            rows.append((f"u{user}", f"i{item}", "rating", float(step), float(np.clip(round(rating), 1, 5))))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp", "value"])
    frame.loc[frame.index % 7 == 3, ["event_type", "value"]] = ["click", np.nan]  # history only
    return frame


def rating_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path,
        "model": "rating-mf",
        "embedding_dim": 8,
        "max_seq_len": 20,
        "top_n": 10,
        "epochs": 40,
        "batch_size": 128,
        "learning_rate": 0.02,
        "train_threads": 1,
    }
    return Settings(**(values | overrides))  # type: ignore[arg-type]


def test_logits_are_the_predicted_ratings_of_the_formula() -> None:
    torch.manual_seed(0)
    model = RatingMF(n_items=4, max_seq_len=3, top_k=2, dim=2)
    with torch.no_grad():
        model.get_buffer("mean").fill_(3.5)
        model.item_bias.copy_(torch.tensor([0.0, 0.1, -0.2, 0.3, 0.4]))
    history = torch.tensor([[PADDING_INDEX, 1, 3]])  # N = {1, 3}
    q, y = model.item_emb.weight.detach(), model.history_emb.weight.detach()
    user = (y[1] + y[3]) / math.sqrt(2)
    expected = torch.stack([3.5 + model.item_bias[i].detach() + q[i] @ user for i in range(5)])
    assert torch.allclose(model.logits(history)[0, 1:], expected[1:], atol=1e-6)

    # An empty history predicts mu + b_i; predict() scores one item per history the same way.
    empty = torch.zeros((1, 3), dtype=torch.long)
    assert torch.allclose(model.logits(empty)[0, 1:], 3.5 + model.item_bias[1:].detach())
    predicted, penalty = model.predict(history, torch.tensor([2, 4]), torch.tensor([0, 0]))
    assert torch.allclose(predicted, expected[[2, 4]], atol=1e-6)
    b, norms = model.item_bias.detach(), (q**2).sum(1)
    assert torch.allclose(penalty, b[[2, 4]] ** 2 + norms[[2, 4]] + (y[1] ** 2).sum() + (y[3] ** 2).sum())


def test_training_lowers_the_validation_rmse_below_the_mean_and_keeps_the_best_epoch(tmp_path: Path) -> None:
    settings = rating_settings(tmp_path)
    dataset = build_dataset(rated_events(), settings.max_seq_len)
    result = train(dataset, settings)

    curve = [stats.val_rmse for stats in result.history]
    assert all(value is not None for value in curve)
    best = result.metrics["val_rmse"]
    assert best == min(curve) == curve[result.best_epoch - 1]  # type: ignore[type-var]
    assert best < curve[0] - 0.1  # type: ignore[operator]
    examples = rating_examples(dataset, settings)
    assert dataset.values is not None
    actual = dataset.values[examples.validation]
    mean_rmse = rating_errors(np.full(len(actual), result.metrics["rating_mean"]), actual)["rmse"]
    assert best < mean_rmse - 0.2
    # The kept weights are the best epoch's: they reproduce its validation RMSE.
    kept = predict_ratings(result.model, dataset, examples.validation, 1.0, 5.0)
    assert rating_errors(kept, actual)["rmse"] == pytest.approx(best, abs=1e-5)
    # The ranking holdout (each validation user's last event) is never a rating example.
    holdout = dataset.user_starts[dataset.val_users + 1] - 1
    assert not np.isin(holdout, np.concatenate([examples.train, examples.validation])).any()
    assert {"val_ndcg@10", "popularity_ndcg@10", "val_mae"} <= set(result.metrics)


def test_a_window_without_rated_events_fails_clearly(tmp_path: Path) -> None:
    events = rated_events().assign(value=np.nan)
    with pytest.raises(ValueError, match="rating-mf needs events with a value"):
        train(build_dataset(events, 20), rating_settings(tmp_path))
    with pytest.raises(ValueError, match="rating-mf needs events with a value"):
        train(build_dataset(events.drop(columns="value"), 20), rating_settings(tmp_path))


def test_export_keeps_parity_and_ranks_by_predicted_rating(tmp_path: Path) -> None:
    settings = rating_settings(tmp_path, epochs=3)
    dataset = build_dataset(rated_events(), settings.max_seq_len)
    model = train(dataset, settings).model
    histories, exclude = dataset.serving_inputs(np.arange(len(dataset.user_ids)), 20)
    histories = np.vstack([histories, np.zeros((1, histories.shape[1]), dtype=np.int64)])
    exclude = np.vstack([exclude, np.zeros((1, exclude.shape[1]), dtype=np.int64)])
    exported = export_model(model, dataset.vocabulary, tmp_path, histories, exclude)  # parity-checked
    assert set(exported.files) >= {"model.onnx", "items.json", "item_embeddings.npy"}
    check_parity(model, tmp_path / "model.onnx", histories[:, -1:], exclude)  # a one-item history
    # q is the item table similar items read.
    assert np.array_equal(model.item_embeddings(), model.item_emb.weight[1:].detach().numpy())


def test_training_cycle_gates_a_rating_model_on_holdout_rmse(tmp_path: Path) -> None:
    settings = rating_settings(tmp_path)
    events = rated_events()
    first = run_training_cycle(events, settings, {})
    assert first.manifest.status == PROMOTED, first.decision.reason
    assert first.decision.baseline_name == "mean rating"
    assert "rmse" in first.decision.reason and first.decision.candidate < first.decision.baseline  # type: ignore[operator]
    assert {"holdout_rmse", "holdout_rmse_baseline", "val_rmse", "rating_min"} <= set(first.manifest.metrics)
    assert all("val_rmse" in point for point in first.manifest.curve)

    # The gate's RMSE (through the ONNX file) is the trainer's (torch) on the same holdout.
    registry = ModelRegistry(settings.model_dir)  # type: ignore[arg-type]
    dataset = build_dataset(events, settings.max_seq_len)
    holdout = rating_examples(dataset, settings).validation
    onnx_predicted = holdout_ratings(registry, first.manifest.version, dataset, holdout)
    assert dataset.values is not None
    assert first.decision.candidate == pytest.approx(
        rating_errors(onnx_predicted, dataset.values[holdout])["rmse"]
    )
    assert first.decision.candidate == pytest.approx(first.manifest.metrics["val_rmse"], abs=1e-4)

    # A candidate that barely trained predicts worse than the served model: rejected.
    untrained = settings.model_copy(update={"epochs": 1, "learning_rate": 1e-4})
    second = run_training_cycle(events, untrained, {})
    assert second.manifest.status == REJECTED, second.decision.reason
    assert second.decision.baseline_name == f"promoted {first.manifest.version}"


def test_the_ranking_protocol_hands_a_rating_model_the_ratings() -> None:
    frame = pd.DataFrame(
        {
            "user_id": ["a"] * 4 + ["b"] * 3,
            "item_id": ["x", "y", "z", "w", "y", "x", "w"],
            "timestamp": [4.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0],
            "value": [4.0, 1.0, 2.0, 3.0, 5.0, np.nan, 2.5],
            "row": np.arange(7),
        }
    )
    split = split_interactions(frame)
    # a in time order: y 1, z 2, w 3 (validation), x 4 (test); b: y 5, x NaN (validation), w (test).
    test_phase = split.test()
    fitting = test_phase.fitting
    values = {
        (split.user_ids[user], split.item_ids[item]): value
        for user, item, value in zip(fitting.owners(), fitting.items, fitting.values, strict=True)  # type: ignore[arg-type]
    }
    assert values == {
        ("a", "y"): 1.0,
        ("a", "z"): 2.0,
        ("a", "w"): 3.0,
        ("b", "y"): 5.0,
        ("b", "x"): pytest.approx(np.nan, nan_ok=True),
    }
    dataset = sequence_dataset(fitting, 5)
    assert dataset.values is not None and np.array_equal(dataset.values, fitting.values, equal_nan=True)


def test_rating_models_are_ranked_only_by_name_and_only_with_ratings(tmp_path: Path) -> None:
    assert "rating-mf" in MODELS and "rating-mf" not in DEFAULT_MODELS and "sasrec" in DEFAULT_MODELS
    path = tmp_path / "clicks.csv"
    rated_events().drop(columns=["value", "event_type"]).to_csv(path, index=False)
    with pytest.raises(EvaluationError, match="rating-mf needs events with a value"):
        evaluate(path, ["rating-mf"], rating_settings(tmp_path))


def test_only_the_values_of_rating_events_are_ratings() -> None:
    events = pd.DataFrame(
        {
            "user_id": ["a"] * 4,
            "item_id": ["x", "y", "z", "w"],
            "event_type": ["rating", "purchase", "rating", "rating"],
            "timestamp": [1.0, 2.0, 3.0, 4.0],
            "value": [4.0, 99.0, 1e300, np.nan],  # a purchase amount, an absurd rating, none
        }
    )
    values = build_dataset(events, 5).values
    assert values is not None
    assert values[0] == 4.0 and np.isnan(values[1:]).all()
