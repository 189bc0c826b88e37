"""The trainer's torch models (``streamrec.trainer.model.MODELS``: mf, sasrec, …) under the protocol.

Tuning is the trainer's own early stopping: :func:`streamrec.trainer.train.train` is given a
:class:`SequenceDataset` whose validation targets are exactly the protocol's validation items
(history and exclusions = the user's train items, full ranking, pessimistic ties), so the epoch it
keeps is the best validation NDCG@10 epoch. The test model is then trained from scratch on train +
validation with the same seed for exactly that many epochs (a dataset without validation users
makes ``train`` run every epoch and keep the last).

The model's vocabulary is the whole item universe (index i + 1 = protocol item i), so items seen
only in validation or test are ranked too, as the protocol requires.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from streamrec.shared.model_contract import PADDING_INDEX
from streamrec.shared.settings import Settings
from streamrec.trainer.dataset import SequenceDataset
from streamrec.trainer.evaluation.protocol import Phase, UserSequences, evaluate_phase
from streamrec.trainer.evaluation.recommender import Recommender, Tuning
from streamrec.trainer.model import SequenceRecommender
from streamrec.trainer.train import train

# Histories scored per forward pass: bounds the [batch, n_items] logits held at once.
SCORE_BATCH = 256


class TrainerModel(Recommender):
    """Adapter: a trainer model family (``settings.model`` name) as a :class:`Recommender`."""

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings.for_model(name)
        self.epochs = settings.epochs  # what fit() trains; tune() sets it to the best validation epoch
        self.model: SequenceRecommender | None = None

    def tune(self, validation: Phase) -> Tuning:
        """Train with early stopping on the protocol's validation items; keep the best epoch count."""
        started = time.perf_counter()
        dataset = sequence_dataset(
            validation.fitting, self.settings.max_seq_len, validation.users, validation.targets
        )
        result = train(dataset, self.settings)
        self.model = result.model
        self.epochs = result.best_epoch
        metrics = evaluate_phase(self.score, validation)  # the full metric set of the kept epoch
        curve = [float("nan") if stats.val_ndcg is None else stats.val_ndcg for stats in result.history]
        return Tuning({"epochs": result.best_epoch}, metrics, time.perf_counter() - started, curve=curve)

    def fit(self, fitting: UserSequences) -> None:
        """Train from scratch for exactly ``self.epochs`` epochs (same seed), no early stopping."""
        dataset = sequence_dataset(fitting, self.settings.max_seq_len)
        self.model = train(dataset, self.settings.model_copy(update={"epochs": self.epochs})).model

    @torch.no_grad()
    def score(self, histories: UserSequences) -> np.ndarray:
        """The model's logits for each history's last ``max_seq_len`` items, padding column dropped."""
        assert self.model is not None, "fit() first"
        self.model.eval()
        windows = model_inputs(histories, self.settings.max_seq_len)
        scores = [
            self.model.logits(torch.from_numpy(windows[start : start + SCORE_BATCH]))[:, PADDING_INDEX + 1 :]
            for start in range(0, len(windows), SCORE_BATCH)
        ]
        if not scores:
            return np.zeros((0, histories.n_items), dtype=np.float32)
        return torch.cat(scores).numpy()

    def n_params(self) -> int:
        """Trainable parameters of the torch model."""
        return 0 if self.model is None else sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def model_inputs(sequences: UserSequences, length: int) -> np.ndarray:
    """Each user's last ``length`` items as model indices (item + 1), oldest first, left-padded with
    PADDING_INDEX: int64 [n_users, length], the trainer's history format."""
    if len(sequences.items) == 0:
        return np.full((sequences.n_users, length), PADDING_INDEX, dtype=np.int64)
    positions = sequences.starts[1:, None] + np.arange(-length, 0, dtype=np.int64)[None, :]
    inside = positions >= sequences.starts[:-1, None]
    return np.where(inside, sequences.items[np.maximum(positions, 0)] + 1, PADDING_INDEX)


def sequence_dataset(
    fitting: UserSequences,
    max_seq_len: int,
    validation_users: np.ndarray | None = None,
    validation_items: np.ndarray | None = None,
) -> SequenceDataset:
    """The trainer's dataset over the whole item universe: train on ``fitting`` and, if given, hold
    out ``validation_items[i]`` as the validation target of ``validation_users[i]``.

    Every fitting position except each user's first item is a training target (as in
    :func:`streamrec.trainer.dataset.build_dataset`).
    """
    if validation_users is None or validation_items is None:
        validation_users = np.zeros(0, dtype=np.int64)
        sequences = fitting
    else:
        sequences = fitting.appended(validation_users, validation_items)
    starts = sequences.starts
    lengths = sequences.lengths
    is_target = np.ones(len(sequences.items), dtype=bool)
    is_target[starts[:-1][lengths > 0]] = False
    is_target[starts[validation_users + 1] - 1] = False
    return SequenceDataset(
        vocabulary=[str(index) for index in range(fitting.n_items)],  # placeholders: only the size is used
        user_ids=[str(user) for user in range(fitting.n_users)],
        items=sequences.items + 1,  # index 0 is padding
        user_starts=starts,
        train_positions=np.flatnonzero(is_target).astype(np.int64),
        val_users=np.asarray(validation_users, dtype=np.int64),
        max_seq_len=max_seq_len,
        values=sequences.values,  # rating models (rating-mf) train on them
    )
