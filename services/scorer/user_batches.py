"""The real-time path: a micro-batch of user features becomes users' lists in Redis, then its
offsets are owed (:class:`~streamrec.scorer.offsets.PartitionOffsets`)."""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import Message

from streamrec.scorer.intake import UserFeaturesIntake
from streamrec.scorer.metrics import FRESHNESS_SECONDS, ScorerCounts
from streamrec.scorer.model_runtime import ServedModel
from streamrec.scorer.offsets import PartitionOffsets
from streamrec.scorer.rescoring import Rescoring
from streamrec.scorer.scoring import ScoredLists
from streamrec.scorer.similar_lists import SimilarLists
from streamrec.scorer.user_lists import UserLists


class UserBatches:
    """Scores the latest features of each user of a micro-batch, writes them, then owes its offsets."""

    def __init__(
        self,
        intake: UserFeaturesIntake,
        offsets: PartitionOffsets,
        rescoring: Rescoring,
        similar: SimilarLists,
        lists: UserLists,
        score: Callable[[dict[str, list[str]]], ScoredLists],
        counts: ScorerCounts,
        chunk: int,
    ) -> None:
        self.intake = intake
        self.offsets = offsets
        self.rescoring = rescoring
        self.similar = similar
        self.lists = lists
        self.score = score  # with the served model and popular list
        self.counts = counts
        self.chunk = chunk  # users per ONNX run, each chunk written before the next runs

    def process(self, messages: list[Message], model: ServedModel | None) -> None:
        """Fold the batch into each user's latest history (and the users erased), write their
        lists, then owe the offsets."""
        decoded = self.intake.decode(messages)
        histories: dict[str, list[str]] = {}  # each user's latest, in the order users were seen
        updated_at: dict[str, float] = {}
        erased: dict[str, None] = {}  # users forgotten in this batch: their lists are deleted first
        for partition, batch in decoded.messages:
            for user in batch.users:
                histories[user.user_id] = user.history  # later messages of the same user win
                updated_at[user.user_id] = batch.updated_at
                self.rescoring.seen(user.user_id, user.history, partition)  # scored now
            # In message order: an earlier message's list of an erased user is not written, a
            # later one (the user's new history) is, after the delete.
            for user_id in batch.forgotten:
                erased[user_id] = None
                histories.pop(user_id, None)
                updated_at.pop(user_id, None)
                self.rescoring.forget(user_id)

        def write() -> None:
            if erased:
                self.lists.delete(list(erased))
            self.similar.observe(histories.values(), model)
            self._write_lists(histories, updated_at)

        self.offsets.write_then_owe(write, decoded.next_offsets)
        self.intake.update_lag(decoded.next_offsets)
        self.counts.batches += 1
        self.counts.messages += len(messages)

    def _write_lists(self, histories: dict[str, list[str]], updated_at: dict[str, float]) -> None:
        # Users with histories of about the same length share an inference: its input is as wide
        # as its longest history, and the model's cost grows with that width.
        users = sorted(histories, key=lambda user: len(histories[user]))
        for start in range(0, len(users), self.chunk):
            part = users[start : start + self.chunk]
            self.lists.write(self.score({user: histories[user] for user in part}), trigger="event")
            written_at = time.time()
            for user in part:
                FRESHNESS_SECONDS.observe(max(0.0, written_at - updated_at[user]))
