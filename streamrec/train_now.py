"""``streamrec train --once``: one training on every event published so far, and what came of it.

1. Wait until ingest has taken every event published before the command started (backlog.py).
2. With a trainer service running on this data dir (it holds the event log's lock), ask that
   trainer to train (shared/train_requests.py) and follow its progress until it answers: never a
   second training beside it. Without one, train here, as the trainer would.
3. Report the model: a readable summary, or JSON.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from tqdm import tqdm

from streamrec.backlog import Offsets, wait_for_ingest
from streamrec.shared.registry import ModelManifest
from streamrec.shared.settings import Settings
from streamrec.shared.train_requests import RequestBox, TrainProgress
from streamrec.trainer.event_log import EventLog
from streamrec.trainer.event_store import EventLogLocked, log_directory, log_owner

POLL_SECONDS = 0.5
# How long the event log may stay without a trainer before the request is given up: a supervised
# trainer that died is back well within this, and answers the request it finds on restart.
TRAINER_GONE_SECONDS = 30.0


class TrainingFailed(RuntimeError):
    """No model came of the training; the message says why."""


@dataclass(frozen=True)
class TrainingOutcome:
    """The model one ``train --once`` got, and who trained it."""

    manifest: ModelManifest
    promoted: bool
    trained_by: str  # "the trainer service (pid N)" or "this command"
    warning: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The outcome as JSON-ready data (``--json``)."""
        manifest = self.manifest
        return {
            "version": manifest.version,
            "status": manifest.status,
            "promoted": self.promoted,
            "reason": manifest.status_reason,
            "model": manifest.model_type,
            "trained_by": self.trained_by,
            "warning": self.warning or None,
            "data": manifest.data,
            "metrics": manifest.metrics,
        }


def train_now(settings: Settings, wait: bool = True) -> TrainingOutcome:
    """Train one model on every event published so far (``wait``) or on what ingest has done.

    Raises IngestStalled (ingest is not taking the backlog), TrainingFailed, or NotEnoughData.
    """
    if wait:
        wait_for_ingest(settings)
    try:
        own_log = EventLog(settings)
    except EventLogLocked:
        return _ask_trainer(settings)
    from streamrec.trainer.service import train_once  # torch: only when this command trains itself

    with own_log, ProgressBar("training here", settings.epochs) as bar:
        result = train_once(settings, own_log, on_epoch=lambda stats: bar.epoch(stats.epoch))
    return TrainingOutcome(result.manifest, result.promoted, "this command")


def _ask_trainer(settings: Settings) -> TrainingOutcome:
    """Have the trainer service that holds the event log train, and wait for its answer."""
    directory = log_directory(settings)
    offsets = Offsets(settings)
    try:
        features_ends = offsets.ends(settings.topic_user_features)
    finally:
        offsets.close()
    box = RequestBox(directory)
    request = box.submit(features_ends)
    status: TrainProgress | None = None
    try:
        with ProgressBar(f"trainer service (pid {log_owner(directory)})", settings.epochs) as bar:
            left_at: float | None = None  # when the log was last seen without a trainer
            while status is None or not status.final:
                time.sleep(POLL_SECONDS)
                status = box.progress(request.id)
                if status is not None:
                    bar.show(status)
                if log_owner(directory) is not None:
                    left_at = None
                elif left_at is None:
                    left_at = time.monotonic()
                elif time.monotonic() - left_at > TRAINER_GONE_SECONDS:
                    raise TrainingFailed(
                        f"the trainer service stopped, and none took its place for {TRAINER_GONE_SECONDS:.0f} s: "
                        "no model was trained (run the command again once it is back, or stop it to "
                        "train here)"
                    )
    finally:
        box.withdraw(request.id)
    if status.state == "failed" or status.manifest is None:
        raise TrainingFailed(f"the trainer service trained no model: {status.detail}")
    return TrainingOutcome(
        ModelManifest.from_dict(status.manifest),
        status.promoted,
        f"the trainer service (pid {status.trainer_pid})",
        status.warning,
    )


class ProgressBar:
    """Epochs done, on a terminal (stderr); silent elsewhere."""

    def __init__(self, who: str, max_epochs: int) -> None:
        self.who = who
        self._bar = tqdm(total=max_epochs, desc=f"{who}: starting", unit="epoch", disable=None, leave=False)

    def epoch(self, done: int, total: int | None = None, metric: dict[str, float] | None = None) -> None:
        """``done`` epochs of at most ``total`` have run."""
        if total:
            self._bar.total = total
        self._bar.set_description(f"{self.who}: training")
        if metric:
            self._bar.set_postfix({name: round(value, 4) for name, value in metric.items()})
        self._bar.update(done - self._bar.n)

    def show(self, status: TrainProgress) -> None:
        """Show a trainer's report on the request."""
        if status.state == "training":
            self.epoch(status.epoch, status.epochs, status.metric)
        elif not status.final:
            detail = f" ({status.detail})" if status.detail else ""
            self._bar.set_description(f"{self.who}: {status.state.replace('_', ' ')}{detail}")

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bar.close()


def summary(outcome: TrainingOutcome, settings: Settings) -> str:
    """What ``train --once`` prints on a terminal: the model, the gate's verdict, what it learnt from."""
    manifest, metrics, data = outcome.manifest, outcome.manifest.metrics, outcome.manifest.data
    served = "served now" if outcome.promoted else "not served"
    lines = [
        f"model {manifest.version} published to {settings.model_dir}: {manifest.status}, {served}",
        f"  quality gate: {manifest.status_reason}",
        f"  trained by {outcome.trained_by}: {manifest.model_type} on {_count(data.get('events'))} events "
        f"of {_count(data.get('users'))} users and {_count(data.get('items'))} items, "
        f"{_count(metrics.get('epochs_run'))} epochs in {metrics.get('train_seconds', 0):.1f} s",
    ]
    validation = []
    if "val_ndcg@10" in metrics:
        popular = metrics.get("popularity_ndcg@10")
        validation.append(
            f"NDCG@10 {metrics['val_ndcg@10']:.4f}"
            + ("" if popular is None else f" (popular items {popular:.4f})")
        )
    validation += [
        f"{label} {metrics[key]:.4f}"
        for key, label in (("val_hr@10", "HR@10"), ("val_rmse", "RMSE"))
        if key in metrics
    ]
    if validation:
        lines.append(f"  validation: {', '.join(validation)}")
    if outcome.warning:
        lines.append(f"  warning: {outcome.warning}")
    return "\n".join(lines)


def _count(value: Any) -> str:
    return "?" if value is None else f"{int(value):,}"
