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

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from streamrec.shared.datasets import load_interactions
from streamrec.shared.logs import get_logger
from streamrec.shared.settings import Settings
from streamrec.trainer.dataset import SequenceDataset, build_dataset
from streamrec.trainer.evaluation.rating_models import (
    RatingSplit,
    SeedModel,
    carve_validation,
    fit_factorisation,
    fit_seed,
    fit_surprise_svd,
    seed_split,
)
from streamrec.trainer.train_rating import RatingExamples, fit_ratings, predict_ratings
from streamrec.trainer.train_rating import rating_errors as errors

log = get_logger(__name__)

# Grids of (dimensions, λ), chosen by validation RMSE; 0 dimensions = the biases alone.
BIAS_GRID = [(0, 0.001), (0, 0.01), (0, 0.05)]
MF_GRID = [(64, 0.05), (64, 0.1), (64, 0.15), (128, 0.1)]
MF_MAX_EPOCHS = 60
RATING_MF = "rating-mf"
RATING_MF_L2_GRID = [0.001, 0.003, 0.01, 0.03]  # rating-mf's λ (settings.rating_l2), by validation RMSE

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
