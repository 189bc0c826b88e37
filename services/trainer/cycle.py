"""One training cycle: events -> trained model -> ONNX (parity-checked) -> registry candidate ->
quality gate -> promoted (served) or rejected -> old versions pruned.

The trainer service (services/trainer/service.py) decides *when* to train and with which events;
this module is the *what*, with no Kafka in sight, so it can run from tests and scripts too.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from streamrec.shared.logs import get_logger
from streamrec.shared.registry import ModelManifest, ModelRegistry, new_version
from streamrec.shared.settings import Settings
from streamrec.trainer.dataset import SequenceDataset, build_dataset
from streamrec.trainer.export import export_model
from streamrec.trainer.gate import GateDecision, judge
from streamrec.trainer.train import EpochCallback, train

log = get_logger(__name__)

# Users whose real histories are scored by both torch and onnxruntime before publishing.
PARITY_SAMPLE_USERS = 256


@dataclass(frozen=True)
class CycleResult:
    """A finished cycle: the new version's manifest (status promoted or rejected) and why."""

    manifest: ModelManifest
    decision: GateDecision

    @property
    def promoted(self) -> bool:
        """True if the new version is now the served one."""
        return self.decision.promote


def run_training_cycle(
    events: pd.DataFrame,
    settings: Settings,
    data_info: dict[str, Any],
    on_epoch: EpochCallback | None = None,
) -> CycleResult:
    """Train on ``events``, export and verify the model, publish it as a candidate, and promote or
    reject it through the quality gate (gate.py) on the same data's holdout; then prune versions
    beyond the retention.

    ``events`` has the columns user_id, item_id, event_type, timestamp, value (one row per event,
    in arrival order). ``data_info`` describes the training window for the manifest (events, users,
    items, window_start, window_end, …); values it gives override the ones computed from ``events``.
    Raises ValueError if there is too little data to train; nothing is published on any error.
    ``on_epoch`` is told of every training epoch as it ends.
    """
    manifest, dataset = publish_candidate(events, settings, data_info, on_epoch)
    registry = ModelRegistry(settings.model_dir)  # type: ignore[arg-type]  # set by Settings' validator
    decision = judge(registry, manifest.version, dataset, settings)
    holdout = decision.as_metrics(settings.gate_metric)
    if decision.promote:
        manifest = registry.promote(manifest.version, decision.reason, holdout)
    else:
        manifest = registry.reject(manifest.version, decision.reason, holdout)
    registry.prune(settings.model_keep_versions)
    log.info(
        "training cycle done",
        extra={
            "model_version": manifest.version,
            "parent_version": manifest.parent_version,
            "status": manifest.status,
            "gate": decision.reason,
            **manifest.metrics,
        },
    )
    return CycleResult(manifest, decision)


def publish_candidate(
    events: pd.DataFrame,
    settings: Settings,
    data_info: dict[str, Any],
    on_epoch: EpochCallback | None = None,
) -> tuple[ModelManifest, SequenceDataset]:
    """Train, export (parity-checked) and publish a candidate version, not judged yet; return its
    manifest and the dataset it was trained on (whose validation users are the gate's holdout)."""
    dataset = build_dataset(events, settings.max_seq_len)
    if dataset.n_items < 2:
        raise ValueError(f"too little data to train: {dataset.n_items} distinct item(s), need at least 2")
    if dataset.n_train_examples == 0:
        raise ValueError("too little data to train: no user has two or more events")

    result = train(dataset, settings, on_epoch)
    registry = ModelRegistry(settings.model_dir)  # type: ignore[arg-type]  # set by Settings' validator
    staging_dir = registry.new_staging_dir()
    try:
        histories, exclude = _parity_sample(dataset, settings)
        # Every event of the window counts (validation items too): what the served model learnt from.
        popularity = np.bincount(dataset.items, minlength=dataset.n_items + 1)[1:]
        exported = export_model(result.model, result.vocabulary, staging_dir, histories, exclude, popularity)
        manifest = ModelManifest(
            version=new_version(),
            created_at=time.time(),
            model_type=settings.model,
            parent_version=registry.promoted_version(),
            n_items=result.model.n_items,
            max_seq_len=result.model.max_seq_len,
            top_k=result.model.top_k,
            opset=exported.opset,
            files=exported.files,
            signature=exported.signature,
            metrics=result.metrics,
            data=_describe_events(events, dataset) | data_info,
            curve=[
                {"epoch": s.epoch, "loss": s.loss, "val_ndcg@10": s.val_ndcg, "seconds": round(s.seconds, 3)}
                | ({} if s.val_rmse is None else {"val_rmse": s.val_rmse})
                for s in result.history
            ],
        )
        registry.publish(staging_dir, manifest)
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise
    return manifest, dataset


def _parity_sample(dataset: SequenceDataset, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs of up to PARITY_SAMPLE_USERS random users, plus one user with no history."""
    rng = np.random.default_rng(settings.seed)
    n_users = len(dataset.user_ids)
    users = rng.choice(n_users, size=min(PARITY_SAMPLE_USERS, n_users), replace=False)
    histories, exclude = dataset.serving_inputs(np.sort(users).astype(np.int64), settings.history_len)
    empty_history = np.zeros((1, histories.shape[1]), dtype=np.int64)
    empty_exclude = np.zeros((1, exclude.shape[1]), dtype=np.int64)
    return np.vstack([histories, empty_history]), np.vstack([exclude, empty_exclude])


def _describe_events(events: pd.DataFrame, dataset: SequenceDataset) -> dict[str, Any]:
    """Default data description of the training window."""
    return {
        "events": len(events),
        "users": len(dataset.user_ids),
        "items": dataset.n_items,
        "window_start": float(events["timestamp"].min()),
        "window_end": float(events["timestamp"].max()),
    }
