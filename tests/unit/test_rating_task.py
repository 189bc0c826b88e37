"""The rating task's parts: the seed's split, the models' training, the errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from streamrec.trainer.evaluation.rating import errors, format_rating_table
from streamrec.trainer.evaluation.rating_models import (
    SeedModel,
    carve_validation,
    fit_factorisation,
    seed_split,
)


def ratings(n_users: int = 60, n_items: int = 40, seed: int = 0) -> pd.DataFrame:
    """Ratings of user and item biases and a rank-2 taste model, plus noise, for half of all pairs."""
    rng = np.random.default_rng(seed)
    users, items = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
    user_bias, item_bias = rng.normal(0, 0.7, n_users), rng.normal(0, 0.7, n_items)
    rows = [
        (f"u{u}", f"i{i}", float(np.clip(3 + user_bias[u] + item_bias[i] + users[u] @ items[i], 1, 5)))
        for u in range(n_users)
        for i in range(n_items)
        if rng.random() < 0.5
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "value"])


def test_the_split_is_the_seeds_sample_and_counts_what_the_test_has_unseen() -> None:
    frame = ratings()
    split = seed_split(frame)
    expected = frame.sample(frac=0.8, random_state=1)
    assert split.train.index.equals(expected.index)
    assert sorted(split.test.index) == sorted(set(frame.index) - set(expected.index))
    unseen = split.unseen()
    assert unseen["test_pairs"] == len(split.test)
    assert unseen["unseen_either"] == int(
        (~split.test.user_id.isin(split.train.user_id) | ~split.test.item_id.isin(split.train.item_id)).sum()
    )
    carved = carve_validation(split.train)
    assert set(carved.train.index) | set(carved.test.index) == set(split.train.index)
    assert not set(carved.test.index) & set(split.test.index)  # tuning never sees the test


def test_the_task_refuses_interactions_without_ratings() -> None:
    frame = ratings()
    frame.loc[0, "value"] = np.nan
    with pytest.raises(ValueError, match="explicit ratings"):
        seed_split(frame)


def test_the_biased_factorisation_learns_a_low_rank_taste_model() -> None:
    split = seed_split(ratings())
    actual = split.test.value.to_numpy()
    mean_only = errors(np.full(len(actual), split.train.value.mean()), actual)["rmse"]
    biases = errors(fit_factorisation(split.train, 0, 0.001, 200).predict(split.test), actual)["rmse"]
    factors = errors(fit_factorisation(split.train, 8, 0.001, 200).predict(split.test), actual)["rmse"]
    assert factors < 0.6 * biases and biases < 0.9 * mean_only


def test_early_stopping_keeps_the_best_validation_epoch() -> None:
    carved = carve_validation(seed_split(ratings()).train)
    fitted = fit_factorisation(carved.train, 8, 0.0, 200, validation=carved.test, patience=2)
    assert fitted.validation_rmse == min(fitted.curve)
    assert fitted.epochs == fitted.curve.index(min(fitted.curve)) + 1
    assert len(fitted.curve) <= fitted.epochs + 2


def test_unseen_users_and_items_get_the_known_sides_prediction() -> None:
    split = seed_split(ratings())
    predict = fit_factorisation(split.train, 4, 0.01, 5).predict
    unknown = pd.DataFrame({"user_id": ["nobody"], "item_id": ["nothing"], "value": [3.0]})
    assert predict(unknown)[0] == pytest.approx(split.train.value.mean(), abs=1e-5)


def test_the_seed_model_has_keras_defaults() -> None:
    model = SeedModel(n_users=10, n_items=20)
    assert model.users.weight.shape == (11, 50) and model.items.weight.shape == (21, 50)
    assert model.users.weight.abs().max() <= 0.05 and float(model.dense.bias.detach()) == 0.0
    expected = 0.01 * (model.users.weight.pow(2).sum() + model.items.weight.pow(2).sum())
    assert torch.isclose(model.penalty(), expected)
    assert model(torch.tensor([1, 2]), torch.tensor([3, 4])).shape == (2,)


def test_errors_and_the_table() -> None:
    assert errors(np.array([1.0, 3.0]), np.array([2.0, 3.0])) == {"rmse": pytest.approx(0.5**0.5), "mae": 0.5}
    table = format_rating_table(
        {
            "dataset": "u.data",
            "test_pairs": 20_000,
            "unseen_either": 12,
            "models": [
                {"name": "biases", "rmse": 0.95, "mae": 0.75, "train_seconds": 1.0, "params": {"l2": 0.01}}
            ],
        }
    )
    assert (
        "u.data" in table
        and "12 with a user or item unseen" in table
        and "0.9500" in table
        and "l2=0.01" in table
    )
