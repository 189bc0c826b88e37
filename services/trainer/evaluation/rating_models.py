"""The rating task's seed split and its models (``streamrec evaluate --task rating``).

:func:`seed_split` is the seed text's 80/20 split, :func:`carve_validation` the validation carve-out
for tuning; the models and their fits are described in services/trainer/evaluation/rating.py, which
runs, tunes and reports them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from streamrec.trainer.train_rating import rating_objective

SEED_FRACTION = 0.8  # the seed text's split: data.sample(frac=0.8, random_state=1)
SEED_RANDOM_STATE = 1
VALIDATION_FRACTION = 0.1  # of the training 80%, for tuning only
VALIDATION_RANDOM_STATE = 2
MF_PATIENCE = 3
MF_BATCH = 1024
MF_LEARNING_RATE = 3e-3


# --------------------------------------------------------------------------------------------
# The split
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RatingSplit:
    """Train and test ratings (columns user_id, item_id, value), and what the test has unseen."""

    train: pd.DataFrame
    test: pd.DataFrame

    def unseen(self) -> dict[str, int]:
        """Test pairs whose user, item, or either is absent from training, and the pairs in total."""
        new_user = ~self.test.user_id.isin(set(self.train.user_id))
        new_item = ~self.test.item_id.isin(set(self.train.item_id))
        return {
            "test_pairs": len(self.test),
            "unseen_user": int(new_user.sum()),
            "unseen_item": int(new_item.sum()),
            "unseen_either": int((new_user | new_item).sum()),
        }


def seed_split(frame: pd.DataFrame) -> RatingSplit:
    """The seed's split: a random 80% (``random_state=1``) for training, the other 20% for test."""
    ratings = frame.reset_index(drop=True)[["user_id", "item_id", "value"]]
    if ratings.value.isna().any():
        raise ValueError("the rating task needs explicit ratings: some interactions have no value")
    train = ratings.sample(frac=SEED_FRACTION, random_state=SEED_RANDOM_STATE)
    return RatingSplit(train, ratings.drop(train.index))


def carve_validation(train: pd.DataFrame) -> RatingSplit:
    """A validation split out of the training ratings (tuning never sees the test)."""
    fit = train.sample(frac=1 - VALIDATION_FRACTION, random_state=VALIDATION_RANDOM_STATE)
    return RatingSplit(fit, train.drop(fit.index))


@dataclass(frozen=True)
class Encoded:
    """Ratings as index tensors; index 0 stands for a user or item unseen in training."""

    users: torch.Tensor
    items: torch.Tensor
    values: torch.Tensor


class Vocabulary:
    """User and item indices of a training frame (1-based; 0 = unseen)."""

    def __init__(self, train: pd.DataFrame) -> None:
        self.users = {user: n for n, user in enumerate(pd.unique(train.user_id), start=1)}
        self.items = {item: n for n, item in enumerate(pd.unique(train.item_id), start=1)}

    def encode(self, frame: pd.DataFrame) -> Encoded:
        """The frame's ratings as indices (unseen ids -> 0)."""
        users = frame.user_id.map(self.users).fillna(0).to_numpy(dtype=np.int64, copy=True)
        items = frame.item_id.map(self.items).fillna(0).to_numpy(dtype=np.int64, copy=True)
        values = frame.value.to_numpy(dtype=np.float32, copy=True)
        return Encoded(torch.from_numpy(users), torch.from_numpy(items), torch.from_numpy(values))


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class BiasedFactorisation(nn.Module):
    """``mu + b_u + b_i + p_u·q_i`` (``dim=0``: the biases alone). Row 0 of every table is the
    unseen user or item and stays zero (``padding_idx``)."""

    def __init__(self, n_users: int, n_items: int, dim: int, mean: float) -> None:
        super().__init__()
        self.mean = mean
        self.user_bias = nn.Embedding(n_users + 1, 1, padding_idx=0)
        self.item_bias = nn.Embedding(n_items + 1, 1, padding_idx=0)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        self.user_factors = nn.Embedding(n_users + 1, dim, padding_idx=0) if dim else None
        self.item_factors = nn.Embedding(n_items + 1, dim, padding_idx=0) if dim else None
        for table in (self.user_factors, self.item_factors):
            if table is not None:
                nn.init.normal_(table.weight, 0.0, 0.1)
                with torch.no_grad():
                    table.weight[0] = 0.0

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted ratings, and the squared norm of the parameters each rating used (its L2 term)."""
        b_u, b_i = self.user_bias(users).squeeze(-1), self.item_bias(items).squeeze(-1)
        prediction, penalty = self.mean + b_u + b_i, b_u**2 + b_i**2
        if self.user_factors is not None and self.item_factors is not None:
            p, q = self.user_factors(users), self.item_factors(items)
            prediction = prediction + (p * q).sum(-1)
            penalty = penalty + (p**2).sum(-1) + (q**2).sum(-1)
        return prediction, penalty


class SeedModel(nn.Module):
    """The seed's Keras model in torch, with Keras's defaults made explicit:

    - ``Embedding``: uniform(-0.05, 0.05) initialisation (Keras ``"uniform"``), 50 dimensions;
    - ``Dot(axes=1)`` of the two embeddings, then ``Dense(1)``: Glorot-uniform kernel, zero bias;
    - the L2 penalty is Keras's ``embeddings_regularizer=l2(0.01)`` (0.01 is ``l2()``'s default),
      added to every batch's loss over the *whole* embedding matrices, as Keras adds it.

    The optimiser (Adam, lr 0.001, Keras's epsilon 1e-7), batch size 32 (Keras's ``fit`` default)
    and 5 epochs are in :func:`fit_seed`.
    """

    DIM = 50
    L2 = 0.01

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__()
        self.users = nn.Embedding(n_users + 1, self.DIM)
        self.items = nn.Embedding(n_items + 1, self.DIM)
        for table in (self.users, self.items):
            nn.init.uniform_(table.weight, -0.05, 0.05)
        self.dense = nn.Linear(1, 1)
        nn.init.xavier_uniform_(self.dense.weight)
        nn.init.zeros_(self.dense.bias)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings."""
        dot = (self.users(users) * self.items(items)).sum(-1, keepdim=True)
        return self.dense(dot).squeeze(-1)

    def penalty(self) -> torch.Tensor:
        """The regulariser's term of one batch's loss."""
        return self.L2 * (self.users.weight.pow(2).sum() + self.items.weight.pow(2).sum())


def fit_seed(
    split: RatingSplit, epochs: int = 5, batch_size: int = 32
) -> Callable[[pd.DataFrame], np.ndarray]:
    """Train :class:`SeedModel` as the seed does; returns its predictor."""
    vocabulary = Vocabulary(split.train)
    data = vocabulary.encode(split.train)
    model = SeedModel(len(vocabulary.users), len(vocabulary.items))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    generator = torch.Generator().manual_seed(SEED_RANDOM_STATE)
    for _ in range(epochs):
        order = torch.randperm(len(data.values), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = (model(data.users[batch], data.items[batch]) - data.values[batch]).pow(2).mean()
            loss = loss + model.penalty()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()

    def predict(frame: pd.DataFrame) -> np.ndarray:
        encoded = vocabulary.encode(frame)
        with torch.no_grad():
            return model(encoded.users, encoded.items).numpy()

    return predict


@dataclass
class FactorisationFit:
    """A trained :class:`BiasedFactorisation` and how it got there."""

    predict: Callable[[pd.DataFrame], np.ndarray]
    epochs: int
    validation_rmse: float | None = None
    curve: list[float] = field(default_factory=list)


def fit_factorisation(
    train: pd.DataFrame,
    dim: int,
    l2: float,
    epochs: int,
    validation: pd.DataFrame | None = None,
    patience: int = MF_PATIENCE,
    seed: int = 0,
) -> FactorisationFit:
    """Train ``mu + b_u + b_i (+ p_u·q_i)`` with Adam on squared error + ``l2`` × the squared norm
    of each rating's parameters. With ``validation``: stop after ``patience`` epochs without a
    better validation RMSE and keep the best epoch's weights; without: train ``epochs`` epochs."""
    torch.manual_seed(seed)
    vocabulary = Vocabulary(train)
    data = vocabulary.encode(train)
    low, high = float(data.values.min()), float(data.values.max())
    model = BiasedFactorisation(len(vocabulary.users), len(vocabulary.items), dim, float(data.values.mean()))
    optimiser = torch.optim.Adam(model.parameters(), lr=MF_LEARNING_RATE)
    held_out = None if validation is None else vocabulary.encode(validation)

    def predict_encoded(encoded: Encoded) -> torch.Tensor:
        with torch.no_grad():
            return model(encoded.users, encoded.items)[0].clamp(low, high)

    best, best_epoch, best_state, curve = math.inf, epochs, None, []
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(data.values))
        for start in range(0, len(order), MF_BATCH):
            batch = order[start : start + MF_BATCH]
            prediction, penalty = model(data.users[batch], data.items[batch])
            loss = rating_objective(prediction, penalty, data.values[batch], l2)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        if held_out is None:
            continue
        rmse = float((predict_encoded(held_out) - held_out.values).pow(2).mean().sqrt())
        curve.append(rmse)
        if rmse < best:
            best, best_epoch = rmse, epoch
            best_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)

    def predict(frame: pd.DataFrame) -> np.ndarray:
        return predict_encoded(vocabulary.encode(frame)).numpy()

    return FactorisationFit(predict, best_epoch, None if held_out is None else best, curve)


def fit_surprise_svd(split: RatingSplit) -> Callable[[pd.DataFrame], np.ndarray]:
    """scikit-surprise's SVD with its defaults (100 factors, 20 epochs, lr 0.005, reg 0.02)."""
    try:
        from surprise import SVD, Dataset, Reader
    except ImportError:  # a dev extra: the reference, not part of streamrec
        raise RuntimeError(
            "the rating task's reference needs scikit-surprise: pip install -e '.[dev]'"
        ) from None
    scale = (float(split.train.value.min()), float(split.train.value.max()))
    trainset = Dataset.load_from_df(split.train[["user_id", "item_id", "value"]], Reader(rating_scale=scale))
    algorithm = SVD(random_state=SEED_RANDOM_STATE)
    algorithm.fit(trainset.build_full_trainset())

    def predict(frame: pd.DataFrame) -> np.ndarray:
        pairs = zip(frame.user_id, frame.item_id, strict=True)
        return np.array([algorithm.predict(user, item).est for user, item in pairs])

    return predict
