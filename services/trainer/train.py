"""The training loop: next-item prediction with a full softmax, early stopping on validation NDCG@10.

The loss is cross-entropy over *all* items (a listwise ranking loss: the true next item has to
beat every other item, not a few sampled negatives), which is affordable for catalogues up to
~10^5 items on CPU. Validation ranks every item for each validation user, with the user's
training items excluded exactly as the scorer excludes history, and reports NDCG@10 and HR@10.
The weights of the best validation epoch are kept.

Models that declare ``all_positions`` (SASRec) are fed whole windows of each user's training
sequence instead of one prefix per example: the window's items as input, the same items shifted
by one as targets, so one forward pass learns every next item in the window. Either way, each
training target is predicted once per epoch and the loss is the mean cross-entropy per target.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from streamrec.shared.logs import get_logger
from streamrec.shared.model_contract import PADDING_INDEX
from streamrec.shared.settings import Settings
from streamrec.trainer.cooccurrence import item_vectors
from streamrec.trainer.dataset import SequenceDataset
from streamrec.trainer.model import INIT_STD, SequenceRecommender, build_model, predicts_ratings

log = get_logger(__name__)

METRIC_K = 10
# Validation scores [rows, n_items + 1] floats at a time; bounds memory for large catalogues.
EVAL_BLOCK_FLOATS = 1 << 25


@dataclass(frozen=True)
class EpochStats:
    """What one epoch did."""

    epoch: int  # 1-based
    loss: float  # mean training cross-entropy
    val_ndcg: float | None  # NDCG@10 on validation, None without validation users
    val_hr: float | None  # HR@10 on validation
    seconds: float
    val_rmse: float | None = None  # rating models (train_rating.py): RMSE of the validation ratings


# Called after every epoch with what it did (progress reports: ``streamrec train --once``).
EpochCallback = Callable[[EpochStats], None]


@dataclass
class TrainResult:
    """A trained model (best epoch's weights, in eval mode) and how it got there."""

    model: SequenceRecommender
    vocabulary: list[str]
    history: list[EpochStats]
    best_epoch: int
    metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0


def seed_everything(seed: int) -> None:
    """Seed torch and numpy so that a run is reproducible."""
    torch.manual_seed(seed)
    np.random.seed(seed)


def ranking_metrics(
    scores: torch.Tensor,
    targets: torch.Tensor,
    seen_rows: torch.Tensor,
    seen_items: torch.Tensor,
    k: int = METRIC_K,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row NDCG@k and HR@k of ``targets`` in the full ranking ``scores`` [B, n_items + 1].

    ``(seen_rows, seen_items)`` pairs are excluded from the ranking (the user's history); a target
    that is itself excluded counts as a miss, as the scorer could never recommend it. Ties count
    against the target, so a model that scores everything equal gets 0, not a perfect score.
    """
    scores = scores.clone()
    scores[seen_rows, seen_items] = float("-inf")
    scores[:, PADDING_INDEX] = float("-inf")
    target_scores = scores.gather(1, targets[:, None])
    rank = (scores >= target_scores).sum(dim=1) - 1  # 0 = best; ties with others count against
    hit = (rank < k) & torch.isfinite(target_scores[:, 0])
    ndcg = torch.where(hit, 1.0 / torch.log2(rank.to(torch.float64) + 2.0), 0.0)
    return ndcg, hit.to(torch.float64)


@torch.no_grad()
def evaluate(model: SequenceRecommender, dataset: SequenceDataset) -> tuple[float, float]:
    """Mean validation (NDCG@10, HR@10) of ``model``; (nan, nan) if there are no validation users."""
    model.eval()  # no dropout etc. while ranking; the next epoch switches back to train mode
    return _evaluate_scores(dataset, model.logits)


def popularity_baseline(dataset: SequenceDataset) -> tuple[float, float]:
    """Validation (NDCG@10, HR@10) of recommending the most popular training items to everyone."""
    counts = torch.from_numpy(dataset.item_counts())
    return _evaluate_scores(dataset, lambda histories: counts.expand(len(histories), -1))


def _evaluate_scores(
    dataset: SequenceDataset, score_fn: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[float, float]:
    users = dataset.val_users
    if len(users) == 0:
        return math.nan, math.nan
    block = max(1, EVAL_BLOCK_FLOATS // (dataset.n_items + 1))
    ndcg_sum = hr_sum = 0.0
    for start in range(0, len(users), block):
        chunk = users[start : start + block]
        histories = torch.from_numpy(dataset.val_histories(chunk))
        rows, items = dataset.val_seen(chunk)
        ndcg, hit = ranking_metrics(
            score_fn(histories),
            torch.from_numpy(dataset.val_targets(chunk)),
            torch.from_numpy(rows),
            torch.from_numpy(items),
        )
        ndcg_sum += float(ndcg.sum())
        hr_sum += float(hit.sum())
    return ndcg_sum / len(users), hr_sum / len(users)


def train(dataset: SequenceDataset, settings: Settings, on_epoch: EpochCallback | None = None) -> TrainResult:
    """Fit a ``settings.model`` model on ``dataset``; deterministic for a given ``settings.seed``.
    ``on_epoch`` is told of every epoch as it ends."""
    if predicts_ratings(settings.model):  # fitted to the events' values, not to next items
        from streamrec.trainer.train_rating import train_rating  # it builds on this module

        return train_rating(dataset, settings, on_epoch)
    if dataset.n_train_examples == 0:
        raise ValueError("no training examples: no user has two or more events")
    started = time.perf_counter()
    seed_everything(settings.seed)
    torch.set_num_threads(settings.train_threads or os.cpu_count() or 1)
    shuffle_rng = np.random.default_rng(settings.seed)

    model = build_model(settings, dataset.n_items)
    if settings.item_init == "cooccurrence":
        model.start_from(
            torch.from_numpy(item_vectors(dataset, model.item_emb.embedding_dim, INIT_STD, settings.seed))
        )
    optimizer = torch.optim.Adam(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    has_validation = len(dataset.val_users) > 0
    log.info(
        "training started",
        extra={
            "model": settings.model,
            "items": dataset.n_items,
            "users": len(dataset.user_ids),
            "train_examples": dataset.n_train_examples,
            "val_users": len(dataset.val_users),
        },
    )

    averaged = WeightAverage(model, settings.weight_average_decay)
    batches = TrainBatches(dataset, settings.batch_size, model.all_positions, settings.windows_per_user)
    history: list[EpochStats] = []
    stopping = EarlyStopping(settings.patience, higher_is_better=True)
    for epoch in range(1, settings.epochs + 1):
        epoch_started = time.perf_counter()
        loss = _train_one_epoch(model, optimizer, batches, shuffle_rng, epoch, averaged)
        kept = averaged.model()
        ndcg, hr = evaluate(kept, dataset) if has_validation else (None, None)
        stats = EpochStats(epoch, loss, ndcg, hr, time.perf_counter() - epoch_started)
        history.append(stats)
        log.info(
            "epoch done",
            extra={
                "epoch": epoch,
                "loss": round(loss, 5),
                "val_ndcg@10": None if ndcg is None else round(ndcg, 5),
                "val_hr@10": None if hr is None else round(hr, 5),
                "seconds": round(stats.seconds, 2),
            },
        )
        if on_epoch is not None:
            on_epoch(stats)
        if stopping.should_stop(epoch, ndcg, kept):
            break

    stopping.restore(model)
    train_seconds = time.perf_counter() - started
    best = history[stopping.best_epoch - 1]
    metrics = run_metrics(history, stopping.best_epoch, train_seconds) | {
        "train_examples": float(dataset.n_train_examples),
        "val_users": float(len(dataset.val_users)),
    }
    if has_validation:
        metrics |= validation_ranking_metrics(dataset, best.val_ndcg or 0.0, best.val_hr or 0.0)
    log.info("training done", extra=metrics)
    return TrainResult(model, dataset.vocabulary, history, stopping.best_epoch, metrics, train_seconds)


class EarlyStopping:
    """Keeps the weights of the best epoch so far, and says when ``patience`` epochs brought no gain.

    An epoch without a score (no validation data) counts as the best: there is nothing to stop on,
    and the last epoch's weights are kept.
    """

    def __init__(self, patience: int, higher_is_better: bool) -> None:
        self.patience = patience
        self.sign = 1.0 if higher_is_better else -1.0
        self.best_epoch = 0
        self.best_score: float | None = None
        self._best_state: dict[str, torch.Tensor] | None = None

    def should_stop(self, epoch: int, score: float | None, model: torch.nn.Module) -> bool:
        """Record ``epoch``'s validation ``score`` of ``model`` (copying its weights if it is the best
        yet); True once ``patience`` epochs passed since the best."""
        if score is None or self.best_score is None or self.sign * (score - self.best_score) > 0:
            self.best_epoch, self.best_score = epoch, score
            self._best_state = copy.deepcopy(model.state_dict())
            return False
        if epoch - self.best_epoch >= self.patience:
            log.info("early stopping", extra={"epoch": epoch, "best_epoch": self.best_epoch})
            return True
        return False

    def restore(self, model: torch.nn.Module) -> None:
        """Load the best epoch's weights into ``model`` and put it in eval mode."""
        if self._best_state is None:
            raise RuntimeError("no epoch was recorded")
        model.load_state_dict(self._best_state)
        model.eval()


def run_metrics(history: list[EpochStats], best_epoch: int, train_seconds: float) -> dict[str, float]:
    """The manifest metrics every training loop reports: how many epochs ran, which was kept, losses."""
    return {
        "best_epoch": float(best_epoch),
        "epochs_run": float(len(history)),
        "train_seconds": round(train_seconds, 3),
        "final_loss": history[-1].loss,
        "best_epoch_loss": history[best_epoch - 1].loss,
    }


def validation_ranking_metrics(dataset: SequenceDataset, ndcg: float, hr: float) -> dict[str, float]:
    """A model's validation NDCG/HR@10 beside the most-popular baseline's on the same users."""
    pop_ndcg, pop_hr = popularity_baseline(dataset)
    return {
        f"val_ndcg@{METRIC_K}": float(ndcg),
        f"val_hr@{METRIC_K}": float(hr),
        f"popularity_ndcg@{METRIC_K}": pop_ndcg,
        f"popularity_hr@{METRIC_K}": pop_hr,
    }


class TrainBatches:
    """The training data of one model, cut into shuffled batches of (input, targets).

    Per-example models get ``batch_size`` (history [B, max_seq_len], next item [B]) pairs. Models
    with ``all_positions`` get ``batch_size`` windows (inputs [B, T], targets [B, T]): each user's
    training targets are cut into runs of up to max_seq_len consecutive positions, newest run
    first, and a window's input is each target's preceding item. Both are left-padded with 0; a
    0 target is no target. Columns that are padding in the whole batch are cut off (T <= max_seq_len).

    ``windows_per_user`` > 0 makes an epoch draw at most that many of each user's windows, anew
    each epoch: a few users with thousands of events then no longer make up most of an epoch
    (the metrics weigh every user equally), and an epoch gets cheaper while, over the epochs,
    every window is still used.
    """

    def __init__(
        self, dataset: SequenceDataset, batch_size: int, all_positions: bool, windows_per_user: int = 0
    ) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.windows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.windows_per_user = windows_per_user
        if all_positions:
            self.windows = _position_windows(dataset)

    def shuffled(self, rng: np.random.Generator) -> tuple[int, Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        """One epoch: (number of training targets, batches in a random order)."""
        if self.windows is None:
            order = rng.permutation(self.dataset.n_train_examples)
            return len(order), self._examples(order)
        inputs, targets, owners = self.windows
        chosen = np.arange(len(inputs))
        if self.windows_per_user > 0:
            # A random rank for each window within its user; keep the ranks below the cap.
            order = np.lexsort((rng.random(len(owners)), owners))
            group_start = np.searchsorted(owners[order], owners[order], side="left")
            chosen = order[np.arange(len(order)) - group_start < self.windows_per_user]
        order = rng.permutation(chosen)
        return int((targets[order] != PADDING_INDEX).sum()), self._windows(order)

    def _examples(self, order: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(order), self.batch_size):
            histories, targets = self.dataset.train_batch(order[start : start + self.batch_size])
            yield torch.from_numpy(histories), torch.from_numpy(targets)

    def _windows(self, order: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        assert self.windows is not None
        inputs, targets, _ = self.windows
        for start in range(0, len(order), self.batch_size):
            chosen = order[start : start + self.batch_size]
            first_column = int((targets[chosen] != PADDING_INDEX).argmax(axis=1).min())
            yield (
                torch.from_numpy(inputs[chosen, first_column:]),
                torch.from_numpy(targets[chosen, first_column:]),
            )


def _position_windows(dataset: SequenceDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets) int64 [n_windows, max_seq_len] covering every training target once, and
    the owner (user) of each window, int64 [n_windows], sorted."""
    length = dataset.max_seq_len
    positions = dataset.train_positions  # sorted; each user's targets are consecutive positions
    owners = np.searchsorted(dataset.user_starts, positions, side="right") - 1
    users, first, counts = np.unique(owners, return_index=True, return_counts=True)
    from_end = np.repeat(first + counts - 1, counts) - np.arange(len(positions))  # 0 = user's newest
    n_windows = -(-counts // length)
    window = np.repeat(np.cumsum(n_windows) - n_windows, counts) + from_end // length
    column = length - 1 - from_end % length
    inputs = np.zeros((int(n_windows.sum()), length), dtype=np.int64)
    targets = np.zeros_like(inputs)
    inputs[window, column] = dataset.items[positions - 1]  # a target is never a user's first item
    targets[window, column] = dataset.items[positions]
    return inputs, targets, np.repeat(users, n_windows)


class WeightAverage:
    """An exponential moving average of a model's weights, updated after every optimiser step.

    With a decay of 0 it is the model itself. SASRec's validation NDCG jumps by ±0.01 from one
    epoch to the next at the learning rate it needs to learn fast; the average of the last few
    hundred steps is a smoother and better model, and it is what is validated and kept.
    """

    def __init__(self, model: SequenceRecommender, decay: float) -> None:
        self._model = model
        self._average = (
            torch.optim.swa_utils.AveragedModel(
                model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True
            )
            if decay > 0
            else None
        )

    def update(self) -> None:
        """Fold the model's current weights into the average."""
        if self._average is not None:
            self._average.update_parameters(self._model)

    def model(self) -> SequenceRecommender:
        """The averaged model (the model itself without averaging)."""
        if self._average is None:
            return self._model
        return self._average.module  # type: ignore[return-value]


def _train_one_epoch(
    model: SequenceRecommender,
    optimizer: torch.optim.Optimizer,
    batches: TrainBatches,
    rng: np.random.Generator,
    epoch: int,
    averaged: WeightAverage,
) -> float:
    """One pass over the shuffled training data; returns the mean loss per target."""
    model.train()
    total_loss = 0.0
    n_targets, epoch_batches = batches.shuffled(rng)
    # disable=None: a bar on a terminal, silence when stderr is a log file (the JSON log line suffices).
    with tqdm(total=n_targets, desc=f"epoch {epoch}", unit="ex", disable=None, leave=False) as bar:
        for inputs, targets in epoch_batches:
            # Column 0 is padding, never a target: it is left out of the softmax (column j = item j + 1).
            if model.all_positions:
                is_target = targets != PADDING_INDEX
                logits, targets = model.prefix_logits(inputs, is_target), targets[is_target]
            else:
                logits = model.logits(inputs)[:, PADDING_INDEX + 1 :]
            loss = F.cross_entropy(logits, targets - 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            averaged.update()
            total_loss += loss.item() * len(targets)
            bar.update(len(targets))
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return total_loss / n_targets
