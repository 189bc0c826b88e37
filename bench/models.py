"""Untrained default models for the benchmarks whose cost does not depend on the weights (scoring,
sessions): built and exported by the trainer's own export path, with its parity check."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from streamrec.shared.registry import ModelManifest, ModelRegistry, new_version
from streamrec.shared.settings import Settings
from streamrec.trainer.export import ExportedModel, export_model
from streamrec.trainer.model import SequenceRecommender, build_model

PARITY_ROWS = 4  # full histories checked for torch/onnxruntime parity at export


def export_untrained_model(
    settings: Settings, vocabulary: list[str], out: Path, rng: np.random.Generator
) -> tuple[SequenceRecommender, ExportedModel]:
    """An untrained default-size model over ``vocabulary``, exported into ``out``; the parity sample
    (random full histories, also the items to exclude) is drawn from ``rng``."""
    n_items = len(vocabulary)
    model = build_model(settings, n_items).eval()
    sample = rng.integers(1, n_items + 1, size=(PARITY_ROWS, settings.max_seq_len))
    return model, export_model(model, vocabulary, out, sample, sample)


def publish_default_model(registry: ModelRegistry, settings: Settings, n_items: int) -> tuple[str, list[str]]:
    """Export an untrained default-size model of ``n_items`` items into ``registry`` and promote it."""
    vocabulary = [f"i{i}" for i in range(1, n_items + 1)]
    staging = registry.new_staging_dir()
    model, exported = export_untrained_model(settings, vocabulary, staging, np.random.default_rng(0))
    manifest = ModelManifest(
        version=new_version(),
        created_at=time.time(),
        model_type=settings.model,
        parent_version=None,
        n_items=n_items,
        max_seq_len=model.max_seq_len,
        top_k=model.top_k,
        opset=exported.opset,
        files=exported.files,
        signature=exported.signature,
        metrics={},
        data={},
    )
    registry.publish(staging, manifest)
    registry.promote(manifest.version, "benchmark")
    return manifest.version, vocabulary
