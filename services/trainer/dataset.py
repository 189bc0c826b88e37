"""Turn an events DataFrame into next-item training data: vocabulary, sequences, examples, validation.

Input columns: ``user_id`` str, ``item_id`` str, ``event_type`` str, ``timestamp`` float, ``value``
(optional: kept per event for rating models, see train_rating.py); other columns are ignored. Rows
are the events in arrival order.

- The vocabulary is every item, most popular first (ties: first appearance), so item index 1 is
  the most popular item and the order is deterministic for a given frame. Index 0 is padding.
- Each user's sequence is their items sorted by (timestamp, row order): a stable sort, so events
  with equal timestamps keep the order they arrived in.
- Leave-last-out validation: a user with >= 3 events gives their last item as the validation
  target and the rest as training; users with fewer events train on everything.
- A training example is "the last ``max_seq_len`` items before position t -> item at t", for every
  position t >= 1 of every training sequence. Examples are not materialised (that would take
  ``n_events * max_seq_len`` integers); :meth:`SequenceDataset.train_batch` builds them per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from streamrec.shared.events import RATING_EVENT_TYPE
from streamrec.shared.model_contract import PADDING_INDEX

REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp")
MAX_RATING_MAGNITUDE = 1e18
MIN_EVENTS_FOR_VALIDATION = 3


@dataclass(frozen=True)
class SequenceDataset:
    """Per-user item sequences (as item indices) plus the training and validation views of them.

    Sequences are stored flat: user ``u``'s chronological items are
    ``items[user_starts[u]:user_starts[u + 1]]`` (training and validation items together).
    """

    vocabulary: list[str]  # vocabulary[i - 1] is the item id of index i
    user_ids: list[str]  # in order of first appearance
    items: np.ndarray  # int64 [n_events]: all users' sequences, concatenated
    user_starts: np.ndarray  # int64 [n_users + 1]: offsets of each user's sequence in `items`
    train_positions: np.ndarray  # int64 [n_examples]: flat positions of the training targets
    val_users: np.ndarray  # int64 [n_val]: users with a validation target (their last item)
    max_seq_len: int
    # float64 [n_events], aligned with `items`: each event's rating (:func:`rating_values`), NaN if
    # it is none; None if the frame had no value column. Only rating models read it.
    values: np.ndarray | None = None
    # int64 [n_events], aligned with `items`: the event's row number in the frame it was built from.
    event_rows: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        """Number of real items (indices 1..n_items)."""
        return len(self.vocabulary)

    @property
    def n_train_examples(self) -> int:
        """Number of next-item training examples."""
        return len(self.train_positions)

    def _window(self, ends: np.ndarray, starts: np.ndarray, length: int | None = None) -> np.ndarray:
        """Left-padded windows of the last ``length`` (default max_seq_len) items before flat
        position ``ends`` (exclusive), not reaching back before ``starts`` (the owner's first item)."""
        length = self.max_seq_len if length is None else length
        offsets = np.arange(-length, 0, dtype=np.int64)
        positions = ends[:, None] + offsets[None, :]
        inside = positions >= starts[:, None]
        return np.where(inside, self.items[np.maximum(positions, 0)], PADDING_INDEX)

    def train_batch(self, example_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Histories int64 [B, max_seq_len] and next-item targets int64 [B] of some examples."""
        positions = self.train_positions[example_ids]
        owners = np.searchsorted(self.user_starts, positions, side="right") - 1
        return self._window(positions, self.user_starts[owners]), self.items[positions]

    def owners(self, positions: np.ndarray) -> np.ndarray:
        """The user of each flat position."""
        return np.searchsorted(self.user_starts, positions, side="right") - 1

    def fitting_histories(self, users: np.ndarray) -> np.ndarray:
        """Each user's last max_seq_len items without their validation target (if they have one),
        int64 [B, max_seq_len] left-padded: what the scorer sends for them, minus the holdout."""
        ends = self.user_starts[users + 1] - np.isin(users, self.val_users)
        return self._window(ends, self.user_starts[users])

    def val_histories(self, users: np.ndarray | None = None) -> np.ndarray:
        """Model input of validation users: their last max_seq_len training items, left-padded."""
        users = self.val_users if users is None else users
        return self._window(self.user_starts[users + 1] - 1, self.user_starts[users])

    def val_targets(self, users: np.ndarray | None = None) -> np.ndarray:
        """The held-out last item of each validation user."""
        users = self.val_users if users is None else users
        return self.items[self.user_starts[users + 1] - 1]

    def val_seen(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, item) pairs of every training item of each given validation user, row = position
        in ``users``. These are excluded from the validation ranking, as the scorer excludes history."""
        starts, ends = self.user_starts[users], self.user_starts[users + 1] - 1
        lengths = ends - starts
        rows = np.repeat(np.arange(len(users), dtype=np.int64), lengths)
        row_offsets = np.cumsum(lengths) - lengths  # where each row's pairs begin in the output
        positions = np.arange(lengths.sum(), dtype=np.int64) + np.repeat(starts - row_offsets, lengths)
        return rows, self.items[positions]

    def serving_inputs(self, users: np.ndarray, exclude_len: int) -> tuple[np.ndarray, np.ndarray]:
        """What the scorer would send for these users now: (history [B, max_seq_len] of their
        latest items, exclude [B, exclude_len] of their latest items), both left-padded with 0."""
        starts, ends = self.user_starts[users], self.user_starts[users + 1]
        return self._window(ends, starts), self._window(ends, starts, exclude_len)

    def item_counts(self) -> np.ndarray:
        """Training-interaction count per item index (validation targets excluded), float64 [n_items + 1]."""
        is_val_target = np.zeros(len(self.items), dtype=bool)
        is_val_target[self.user_starts[self.val_users + 1] - 1] = True
        return np.bincount(self.items[~is_val_target], minlength=self.n_items + 1).astype(np.float64)


def build_dataset(events: pd.DataFrame, max_seq_len: int) -> SequenceDataset:
    """Build the vocabulary, per-user sequences, training examples and validation split."""
    missing = [column for column in REQUIRED_COLUMNS if column not in events.columns]
    if missing:
        raise ValueError(f"events frame misses column(s): {', '.join(missing)}")

    item_ids = events["item_id"].astype(str).to_numpy()
    user_ids = events["user_id"].astype(str).to_numpy()

    # Vocabulary: by count descending, ties by first appearance (factorize numbers by first appearance).
    item_codes, unique_items = pd.factorize(item_ids)
    counts = np.bincount(item_codes)
    by_popularity = np.lexsort((np.arange(len(unique_items)), -counts))
    index_of_code = np.empty(len(unique_items), dtype=np.int64)
    index_of_code[by_popularity] = np.arange(1, len(unique_items) + 1)  # 0 stays padding
    vocabulary = [str(item) for item in unique_items[by_popularity]]

    # Sequences: group by user (first appearance), then time, then arrival order (lexsort is stable).
    user_codes, unique_users = pd.factorize(user_ids)
    timestamps = events["timestamp"].to_numpy(dtype=np.float64)
    order = np.lexsort((np.arange(len(events)), timestamps, user_codes))
    items = index_of_code[item_codes[order]]
    lengths = np.bincount(user_codes, minlength=len(unique_users))
    user_starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    val_users = np.flatnonzero(lengths >= MIN_EVENTS_FOR_VALIDATION).astype(np.int64)
    # Training targets: every position except each user's first item and the validation targets.
    is_target = np.ones(len(items), dtype=bool)
    is_target[user_starts[:-1][lengths > 0]] = False
    is_target[user_starts[val_users + 1] - 1] = False

    values = None
    if "value" in events.columns:
        values = rating_values(events)[order]
    return SequenceDataset(
        vocabulary=vocabulary,
        user_ids=[str(user) for user in unique_users],
        items=items.astype(np.int64),
        user_starts=user_starts,
        train_positions=np.flatnonzero(is_target).astype(np.int64),
        val_users=val_users,
        max_seq_len=max_seq_len,
        values=values,
        event_rows=order.astype(np.int64),
    )


def rating_values(events: pd.DataFrame) -> np.ndarray:
    """Each event's rating, float64 [len(events)], NaN where it has none.

    A rating is the value of a ``rating`` event (all values if the frame has no event types): a
    purchase's value, e.g. an amount, is not one. Values a float32 model cannot hold (beyond
    ±1e18, whose square overflows float32) are dropped as not ratings rather than fail training.
    """
    values = pd.to_numeric(events["value"], errors="coerce").to_numpy(dtype=np.float64)
    if "event_type" in events.columns:
        values = np.where(events["event_type"].to_numpy() == RATING_EVENT_TYPE, values, np.nan)
    return np.where(np.abs(values) <= MAX_RATING_MAGNITUDE, values, np.nan)
