"""``streamrec evaluate --task rating``: explicit rating prediction, by the seed's own protocol.

The seed text splits MovieLens ``ratings.csv`` at random, ``data.sample(frac=0.8, random_state=1)``
for training and the rest for test, trains, and predicts the test ratings. :func:`seed_split` is
exactly that split (the frame in file order, as :func:`~streamrec.shared.datasets.load_interactions`
reads it). Test pairs whose user or item never occurs in training are kept and counted: every
model predicts them from what it does know (the global mean and the known side's bias).

Models, all in torch except the mean and the reference:

- ``global-mean``: the training ratings' mean.
- ``biases``: ``mu + b_u + b_i``, squared error + L2 on the biases.
- ``seed``: the seed's model as its Keras code builds it (:class:`SeedModel`): 50-dimensional user
  and item embeddings, their dot product, a ``Dense(1)``; Adam (0.001) on the squared error plus
  an L2 penalty on the embeddings, batches of 32, 5 epochs.
- ``biased-mf``: ``mu + b_u + b_i + p_u·q_i``, squared error + λ‖θ‖² over the parameters each
  rating uses (the classic regularised SVD objective), Adam, early stopping; λ and the size tuned
  on a validation split carved out of the 80% (never the test).
- ``rating-mf``: the trainer's servable rating model (:class:`~streamrec.trainer.model.RatingMF`,
  ``mu + b_i + q_i·|N|^-1/2 Σ_{j in N} y_j`` with N the user's items, no user table), trained by the
  trainer's own loop (:func:`~streamrec.trainer.train_rating.fit_ratings`) with its defaults; λ
  tuned on the same validation carve-out. Its input is what the scorer sends for the user: their
  last ``max_seq_len`` items of the whole file in time order, test items included (their items, not
  their ratings: a served model knows what a user rated, not how).
- ``surprise-svd``: scikit-surprise's ``SVD`` with its defaults, on the same split, in the same run:
  the reference the best model must match.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from streamrec.shared.datasets import load_interactions
from streamrec.shared.logs import get_logger
from streamrec.shared.settings import Settings
from streamrec.trainer.dataset import SequenceDataset, build_dataset
from streamrec.trainer.train_rating import RatingExamples, fit_ratings, predict_ratings, rating_objective
from streamrec.trainer.train_rating import rating_errors as errors

log = get_logger(__name__)

SEED_FRACTION = 0.8  # the seed text's split: data.sample(frac=0.8, random_state=1)
SEED_RANDOM_STATE = 1
VALIDATION_FRACTION = 0.1  # of the training 80%, for tuning only
VALIDATION_RANDOM_STATE = 2
# Grids of (dimensions, λ), chosen by validation RMSE; 0 dimensions = the biases alone.
BIAS_GRID = [(0, 0.001), (0, 0.01), (0, 0.05)]
MF_GRID = [(64, 0.05), (64, 0.1), (64, 0.15), (128, 0.1)]
MF_MAX_EPOCHS = 60
MF_PATIENCE = 3
MF_BATCH = 1024
MF_LEARNING_RATE = 3e-3
RATING_MF = "rating-mf"
RATING_MF_L2_GRID = [0.001, 0.003, 0.01, 0.03]  # rating-mf's λ (settings.rating_l2), by validation RMSE


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


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def tune_factorisation(split: RatingSplit, grid: list[tuple[int, float]]) -> dict[str, Any]:
    """The best (size, λ, epochs) of ``grid`` by RMSE on a validation split of the training data."""
    carved = carve_validation(split.train)
    trials = []
    for dim, l2 in grid:
        started = time.perf_counter()
        fitted = fit_factorisation(carved.train, dim, l2, MF_MAX_EPOCHS, validation=carved.test)
        trials.append(
            {
                "dim": dim,
                "l2": l2,
                "epochs": fitted.epochs,
                "validation_rmse": fitted.validation_rmse,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        log.info("rating model tuned", extra={"trial": trials[-1]})
    return {"chosen": min(trials, key=lambda trial: trial["validation_rmse"]), "trials": trials}


def rating_mf_dataset(
    frame: pd.DataFrame, split: RatingSplit, max_seq_len: int
) -> tuple[SequenceDataset, np.ndarray]:
    """The trainer's dataset of the whole file without the test ratings' values (their events stay
    history) and without a ranking holdout, and the dataset position of each frame row."""
    events = frame.reset_index(drop=True)
    events = events.assign(value=events.value.where(~events.index.isin(split.test.index)))
    dataset = build_dataset(events, max_seq_len)
    dataset = replace(dataset, val_users=np.zeros(0, dtype=np.int64))
    assert dataset.event_rows is not None
    positions = np.empty(len(events), dtype=np.int64)
    positions[dataset.event_rows] = np.arange(len(events))
    return dataset, positions


def tune_rating_mf(
    dataset: SequenceDataset, positions: np.ndarray, split: RatingSplit, settings: Settings
) -> dict[str, Any]:
    """rating-mf's best λ (and epochs) of RATING_MF_L2_GRID by RMSE on the validation carve-out."""
    carved = carve_validation(split.train)
    examples = RatingExamples(positions[carved.train.index], positions[carved.test.index])
    trials = []
    for l2 in RATING_MF_L2_GRID:
        result = fit_ratings(dataset, examples, settings.model_copy(update={"rating_l2": l2}))
        trials.append(
            {
                "l2": l2,
                "epochs": result.best_epoch,
                "validation_rmse": result.metrics["val_rmse"],
                "seconds": round(result.train_seconds, 1),
            }
        )
        log.info("rating model tuned", extra={"trial": trials[-1]})
    return {"chosen": min(trials, key=lambda trial: trial["validation_rmse"]), "trials": trials}


def fit_rating_mf(
    dataset: SequenceDataset,
    positions: np.ndarray,
    split: RatingSplit,
    settings: Settings,
    chosen: dict[str, Any],
) -> Callable[[pd.DataFrame], np.ndarray]:
    """rating-mf refit on all training ratings with the chosen λ for the chosen epochs; returns
    its predictor (of frame rows, by their index)."""
    examples = RatingExamples(positions[split.train.index], np.zeros(0, dtype=np.int64))
    tuned = settings.model_copy(update={"rating_l2": chosen["l2"], "epochs": chosen["epochs"]})
    result = fit_ratings(dataset, examples, tuned)
    low, high = result.metrics["rating_min"], result.metrics["rating_max"]
    return lambda frame: predict_ratings(result.model, dataset, positions[frame.index], low, high)


def evaluate_ratings(dataset: Path, settings: Settings | None = None) -> dict[str, Any]:
    """Every rating model on the seed's split of ``dataset``: test RMSE/MAE per model, the unseen
    pairs, and the validation trials of the tuned models. ``settings`` (default: the environment's)
    gives rating-mf its trainer settings, taken for that model."""
    frame = load_interactions(dataset)
    split = seed_split(frame)
    actual = split.test.value.to_numpy()
    rows: list[dict[str, Any]] = []
    tuning: dict[str, Any] = {}

    def record(
        name: str, fit: Callable[[], Callable[[pd.DataFrame], np.ndarray]], params: dict[str, Any]
    ) -> None:
        started = time.perf_counter()
        predict = fit()
        seconds = time.perf_counter() - started
        rows.append(
            {
                "name": name,
                **errors(predict(split.test), actual),
                "train_seconds": round(seconds, 1),
                "params": params,
            }
        )
        log.info("rating model evaluated", extra={"row": rows[-1]})

    mean = float(split.train.value.mean())
    record("global-mean", lambda: lambda frame: np.full(len(frame), mean), {})
    for name, grid in (("biases", BIAS_GRID), ("biased-mf", MF_GRID)):
        tuned = tuning[name] = tune_factorisation(split, grid)
        chosen = tuned["chosen"]
        record(
            name,
            lambda chosen=chosen: (
                fit_factorisation(split.train, chosen["dim"], chosen["l2"], chosen["epochs"]).predict
            ),
            {key: chosen[key] for key in ("dim", "l2", "epochs")},
        )
    record(
        "seed", lambda: fit_seed(split), {"dim": SeedModel.DIM, "l2": SeedModel.L2, "epochs": 5, "batch": 32}
    )
    rating_settings = (settings or Settings()).for_model(RATING_MF)
    events, positions = rating_mf_dataset(frame, split, rating_settings.max_seq_len)  # type: ignore[arg-type]
    tuned = tuning[RATING_MF] = tune_rating_mf(events, positions, split, rating_settings)
    chosen = tuned["chosen"]
    record(
        RATING_MF,
        lambda: fit_rating_mf(events, positions, split, rating_settings, chosen),
        {"dim": rating_settings.embedding_dim, "l2": chosen["l2"], "epochs": chosen["epochs"]},
    )
    record("surprise-svd", lambda: fit_surprise_svd(split), {"library": "scikit-surprise", "defaults": True})
    return {
        "dataset": Path(dataset).name,
        "task": "rating",
        **split.unseen(),
        "models": rows,
        "tuning": tuning,
    }


def format_rating_table(result: dict[str, Any]) -> str:
    """Test RMSE/MAE per model as an aligned text table."""
    header = ["model", "RMSE", "MAE", "train s", "chosen"]
    rows = [header] + [
        [
            entry["name"],
            f"{entry['rmse']:.4f}",
            f"{entry['mae']:.4f}",
            f"{entry['train_seconds']:.1f}",
            " ".join(f"{key}={value}" for key, value in entry["params"].items()) or "-",
        ]
        for entry in result["models"]
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        f"{result['dataset']}: seed split (80/20, random_state=1), {result['test_pairs']:,} test ratings, "
        f"{result['unseen_either']:,} with a user or item unseen in training"
    ]
    for index, row in enumerate(rows):
        cells = [
            row[0].ljust(widths[0]),
            *(cell.rjust(width) for cell, width in zip(row[1:-1], widths[1:-1], strict=True)),
            row[-1],
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def plot_ratings(results: list[dict[str, Any]], path: Path) -> None:
    """A PNG: test RMSE per model, one group of bars per dataset (the reference hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [entry["name"] for entry in results[0]["models"]]
    figure, axis = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(results)
    for n, result in enumerate(results):
        rmse = {entry["name"]: entry["rmse"] for entry in result["models"]}
        positions = np.arange(len(names)) + (n - (len(results) - 1) / 2) * width
        bars = axis.bar(positions, [rmse[name] for name in names], width, label=result["dataset"])
        for bar, name in zip(bars, names, strict=True):
            axis.annotate(
                f"{rmse[name]:.3f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
            if name == "surprise-svd":
                bar.set_hatch("//")
    axis.set_xticks(np.arange(len(names)), names)
    axis.set_ylabel("test RMSE (lower is better)")
    axis.set_ylim(0.7, max(entry["rmse"] for result in results for entry in result["models"]) * 1.05)
    axis.set_title("Rating prediction, the seed's 80/20 split")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
