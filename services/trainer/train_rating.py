"""The rating loop: a rating model (``predicts_ratings``, e.g. RatingMF) fitted to events' values.

A rating example is a ``rating`` event with a value (MovieLens replays publish the rating as the
value; :func:`~.dataset.rating_values`).
Its input is its user's history as the scorer sends it, the user's last ``max_seq_len`` items,
rated or not (minus the ranking holdout, below: :meth:`SequenceDataset.fitting_histories`): the
set N(u) of SVD++, the same for all of a user's ratings, rated item included, as a served model
reads it when it ranks that item. Its target is the value; events without a value are history only. The objective is the regularised SVD one: squared
error + λ‖θ‖² over the parameters each rating uses (``settings.rating_l2``), with Adam; early
stopping on validation RMSE, the best epoch's weights kept.

Validation (:func:`rating_examples`): a random ``VALIDATION_FRACTION`` of the rated events. The
ranking holdout of the dataset (each validation user's last event, the quality gate's holdout) is
never a rating example, so the model's validation NDCG@10, reported too, is measured on events it
never learnt from, like every other model's.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from streamrec.shared.logs import get_logger
from streamrec.shared.settings import Settings
from streamrec.trainer.dataset import SequenceDataset
from streamrec.trainer.model import SequenceRecommender, build_model
from streamrec.trainer.train import (
    EarlyStopping,
    EpochCallback,
    EpochStats,
    TrainResult,
    evaluate,
    run_metrics,
    seed_everything,
    validation_ranking_metrics,
)

log = get_logger(__name__)

VALIDATION_FRACTION = 0.1  # of the rated events: early stopping, and the gate's RMSE holdout
# Rated events predicted per forward pass outside training.
PREDICT_BATCH = 4096


@dataclass(frozen=True)
class RatingExamples:
    """Which rated events a rating model trains and validates on (flat dataset positions)."""

    train: np.ndarray  # int64 [n_train]
    validation: np.ndarray  # int64 [n_validation]; empty: train every epoch, keep the last


def rating_examples(dataset: SequenceDataset, settings: Settings) -> RatingExamples:
    """The trainer's split of the rated events (see the module docstring); deterministic for a
    given ``settings.seed``. Without validation users everything trains. Raises ValueError if no
    event has a value."""
    values = dataset.values
    rated = np.zeros(0, dtype=np.int64) if values is None else np.flatnonzero(~np.isnan(values))
    if len(rated) == 0:
        raise ValueError(
            f"{settings.model} needs events with a value (`rating` events with their rating) to train "
            f"on: none of the {len(dataset.items)} events is one"
        )
    if len(dataset.val_users) == 0:
        return RatingExamples(rated, np.zeros(0, dtype=np.int64))
    rated = np.setdiff1d(rated, dataset.user_starts[dataset.val_users + 1] - 1)  # the ranking holdout
    held_out = np.random.default_rng(settings.seed).random(len(rated)) < VALIDATION_FRACTION
    return RatingExamples(rated[~held_out], rated[held_out])


def rating_objective(
    prediction: torch.Tensor, penalty: torch.Tensor, values: torch.Tensor, l2: float
) -> torch.Tensor:
    """Mean over a batch of squared error + ``l2`` × the squared norm of the parameters each
    rating used (``penalty``): the regularised SVD objective."""
    return ((prediction - values).pow(2) + l2 * penalty).mean()


def rating_errors(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """RMSE and MAE."""
    difference = np.asarray(predicted, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    return {"rmse": float(np.sqrt(np.mean(difference**2))), "mae": float(np.mean(np.abs(difference)))}


def rating_batch(dataset: SequenceDataset, positions: np.ndarray) -> tuple[torch.Tensor, ...]:
    """Model input of the ratings at ``positions``: (histories [U, max_seq_len] of their distinct
    users, items [B], owners [B]: the row of each rating's user in the histories)."""
    users, owners = np.unique(dataset.owners(positions), return_inverse=True)
    return (
        torch.from_numpy(dataset.fitting_histories(users)),
        torch.from_numpy(dataset.items[positions]),
        torch.from_numpy(owners.astype(np.int64)),
    )


@torch.no_grad()
def predict_ratings(
    model: SequenceRecommender, dataset: SequenceDataset, positions: np.ndarray, low: float, high: float
) -> np.ndarray:
    """The model's rating of the events at ``positions``, clipped to the training ratings' range
    [low, high], float32 [len(positions)]."""
    model.eval()
    predictions = [np.zeros(0, dtype=np.float32)]
    for start in range(0, len(positions), PREDICT_BATCH):
        predicted, _ = model.predict(*rating_batch(dataset, positions[start : start + PREDICT_BATCH]))  # type: ignore[operator]
        predictions.append(predicted.clamp(low, high).numpy())
    return np.concatenate(predictions)


def train_rating(
    dataset: SequenceDataset, settings: Settings, on_epoch: EpochCallback | None = None
) -> TrainResult:
    """Fit a rating model on the trainer's split of ``dataset``'s rated events (:func:`rating_examples`)."""
    return fit_ratings(dataset, rating_examples(dataset, settings), settings, on_epoch)


def fit_ratings(
    dataset: SequenceDataset,
    examples: RatingExamples,
    settings: Settings,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Fit a ``settings.model`` rating model on ``examples``; deterministic for a given ``settings.seed``.
    ``on_epoch`` is told of every epoch as it ends.

    The metrics hold val_rmse and val_mae (of the best epoch), the training ratings' mean and range
    (rating_mean, rating_min, rating_max: predictions are clipped to the range), and, if ``dataset``
    has validation users, the ranking metrics every model reports (val_ndcg@10 …).
    """
    if len(examples.train) == 0:
        raise ValueError(f"{settings.model}: no rated event to train on")
    assert dataset.values is not None  # rated examples imply values
    started = time.perf_counter()
    seed_everything(settings.seed)
    torch.set_num_threads(settings.train_threads or os.cpu_count() or 1)
    shuffle_rng = np.random.default_rng(settings.seed)

    model = build_model(settings, dataset.n_items)
    if not model.predicts_ratings:
        raise ValueError(f"{settings.model} is not a rating model")
    train_values = dataset.values[examples.train]
    low, high = float(train_values.min()), float(train_values.max())
    with torch.no_grad():
        model.get_buffer("mean").fill_(float(train_values.mean()))
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    has_validation = len(examples.validation) > 0
    val_values = dataset.values[examples.validation]
    log.info(
        "training started",
        extra={
            "model": settings.model,
            "items": dataset.n_items,
            "users": len(dataset.user_ids),
            "train_ratings": len(examples.train),
            "val_ratings": len(examples.validation),
        },
    )

    history: list[EpochStats] = []
    errors: list[dict[str, float] | None] = []  # each epoch's validation RMSE and MAE
    stopping = EarlyStopping(settings.patience, higher_is_better=False)
    for epoch in range(1, settings.epochs + 1):
        epoch_started = time.perf_counter()
        loss = _train_one_epoch(model, optimizer, dataset, examples.train, settings, shuffle_rng, epoch)
        val = None
        if has_validation:
            val = rating_errors(predict_ratings(model, dataset, examples.validation, low, high), val_values)
        stats = _epoch_done(epoch, loss, val, time.perf_counter() - epoch_started)
        history.append(stats)
        errors.append(val)
        if on_epoch is not None:
            on_epoch(stats)
        if stopping.should_stop(epoch, stats.val_rmse, model):
            break

    stopping.restore(model)
    train_seconds = time.perf_counter() - started
    metrics = run_metrics(history, stopping.best_epoch, train_seconds) | {
        "train_ratings": float(len(examples.train)),
        "val_ratings": float(len(examples.validation)),
        "rating_mean": float(train_values.mean()),
        "rating_min": low,
        "rating_max": high,
        "val_users": float(len(dataset.val_users)),
    }
    best_errors = errors[stopping.best_epoch - 1]
    if best_errors is not None:
        metrics |= {"val_rmse": best_errors["rmse"], "val_mae": best_errors["mae"]}
    if len(dataset.val_users) > 0:
        metrics |= validation_ranking_metrics(dataset, *evaluate(model, dataset))
    log.info("training done", extra=metrics)
    return TrainResult(model, dataset.vocabulary, history, stopping.best_epoch, metrics, train_seconds)


def _epoch_done(epoch: int, loss: float, val: dict[str, float] | None, seconds: float) -> EpochStats:
    """An epoch's stats (its validation RMSE as the metric early stopping watches), logged."""
    stats = EpochStats(epoch, loss, None, None, seconds, None if val is None else val["rmse"])
    log.info(
        "epoch done",
        extra={
            "epoch": epoch,
            "loss": round(loss, 5),
            "val_rmse": None if val is None else round(val["rmse"], 5),
            "val_mae": None if val is None else round(val["mae"], 5),
            "seconds": round(stats.seconds, 2),
        },
    )
    return stats


def _train_one_epoch(
    model: SequenceRecommender,
    optimizer: torch.optim.Optimizer,
    dataset: SequenceDataset,
    positions: np.ndarray,
    settings: Settings,
    rng: np.random.Generator,
    epoch: int,
) -> float:
    """One pass over the training ratings in a random order; returns the mean objective per rating."""
    assert dataset.values is not None
    model.train()
    total_loss = 0.0
    order = positions[rng.permutation(len(positions))]
    batch_size = settings.batch_size or 1
    # disable=None: a bar on a terminal, silence when stderr is a log file (the JSON log line suffices).
    with tqdm(total=len(order), desc=f"epoch {epoch}", unit="ex", disable=None, leave=False) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            values = torch.from_numpy(dataset.values[chunk].astype(np.float32))
            prediction, penalty = model.predict(*rating_batch(dataset, chunk))  # type: ignore[operator]
            loss = rating_objective(prediction, penalty, values, settings.rating_l2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(chunk)
            bar.update(len(chunk))
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return total_loss / len(order)
