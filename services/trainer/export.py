"""Export a trained model to ONNX, prove onnxruntime ranks like torch, write the version's files.

The exported graph is the model's serving head ``forward(history, exclude) -> (scores, items)``
with the signature of shared/model_contract.py. Before anything is published, onnxruntime and torch
score the same real histories and must return the same top-k items with the same scores.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import orjson
import torch

from streamrec.shared.logs import get_logger
from streamrec.shared.model_contract import (
    ITEM_EMBEDDINGS_FILE,
    ITEM_POPULARITY_FILE,
    MODEL_FILE,
    ONNX_INPUT_EXCLUDE,
    ONNX_INPUT_HISTORY,
    ONNX_OUTPUT_ITEMS,
    ONNX_OUTPUT_SCORES,
    PADDING_INDEX,
    VOCAB_FILE,
)
from streamrec.shared.registry import (
    BATCH_DIM,
    EXCLUDE_DIM,
    HISTORY_DIM,
    MAX_HISTORY_PROPERTY,
    ModelIntegrityError,
    expected_signature,
    onnx_signature,
    sha256_file,
)
from streamrec.trainer.model import SequenceRecommender

log = get_logger(__name__)

# Opset 20 is torch 2.13's default for the dynamo exporter; pinned so a torch upgrade cannot
# silently produce a graph an older onnxruntime in the scorer image cannot load.
ONNX_OPSET = 20
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-4


class ParityError(ModelIntegrityError):
    """onnxruntime and torch disagree on the exported model: it must not be published."""


@dataclass(frozen=True)
class ExportedModel:
    """What :func:`export_model` wrote into the staging directory."""

    signature: dict[str, Any]  # manifest form, equal to registry.expected_signature(...)
    opset: int
    files: dict[str, str]  # file name -> sha256 hex (model.onnx, items.json, item_embeddings.npy, …)


def export_model(
    model: SequenceRecommender,
    vocabulary: list[str],
    out_dir: Path,
    sample_histories: np.ndarray,
    sample_exclude: np.ndarray,
    popularity: np.ndarray | None = None,
) -> ExportedModel:
    """Write ``model.onnx``, ``items.json`` and ``item_embeddings.npy`` into ``out_dir`` and check
    torch/onnxruntime parity. With ``popularity`` (training interactions per item, entry i - 1 =
    item index i), also write it as ``item_popularity.npy`` (the scorer's popularity penalty).

    ``sample_histories`` [N, max_seq_len] and ``sample_exclude`` [N, E] are real model inputs used
    for the parity check (see :func:`check_parity`); raises :class:`ParityError` if it fails.
    """
    if len(vocabulary) != model.n_items:
        raise ValueError(f"vocabulary has {len(vocabulary)} items, the model {model.n_items}")
    if popularity is not None and np.shape(popularity) != (model.n_items,):
        raise ValueError(f"popularity has shape {np.shape(popularity)}, expected ({model.n_items},)")
    out_dir = Path(out_dir)
    model_path = out_dir / MODEL_FILE
    model.eval()
    graph = _export_onnx(model, model_path)
    (out_dir / VOCAB_FILE).write_bytes(orjson.dumps(vocabulary))
    embeddings = model.item_embeddings()
    if embeddings is not None:  # the scorer's similar items; a version without it is still served
        np.save(out_dir / ITEM_EMBEDDINGS_FILE, embeddings, allow_pickle=False)
    if popularity is not None:
        np.save(out_dir / ITEM_POPULARITY_FILE, np.asarray(popularity, dtype=np.int64), allow_pickle=False)

    signature = onnx_signature(model_path)
    contract = expected_signature(model.max_seq_len, model.top_k)
    if signature != contract:
        raise ModelIntegrityError(f"exported signature {signature} does not match the contract {contract}")
    # The scorer sends histories cut to the batch's longest one: check those widths too (the
    # samples' own real width, and a single item).
    real_width = _real_width(sample_histories)
    for width in sorted({sample_histories.shape[1], real_width, 1}, reverse=True):
        check_parity(model, model_path, sample_histories[:, -width:], sample_exclude)

    opset = next(entry.version for entry in graph.opset_import if entry.domain == "")
    names = [MODEL_FILE, VOCAB_FILE, *([ITEM_EMBEDDINGS_FILE] if embeddings is not None else [])]
    names += [ITEM_POPULARITY_FILE] if popularity is not None else []
    files = {name: sha256_file(out_dir / name) for name in names}
    log.info(
        "model exported",
        extra={"opset": opset, "onnx_bytes": model_path.stat().st_size, "parity_rows": len(sample_histories)},
    )
    return ExportedModel(signature=signature, opset=opset, files=files)


def _export_onnx(model: SequenceRecommender, path: Path) -> onnx.ModelProto:
    """Run torch's dynamo exporter (torch.export + onnxscript) with dynamic batch, history and exclude.

    The batch dimension is dynamic so the scorer can send any micro-batch size. The history and
    exclude widths are dynamic so it can send each batch only as wide as its longest history: a
    model's cost grows with the positions it reads, and padding is most of a short history.
    Example inputs have 2 rows / 2 columns because torch.export specialises sizes 0 and 1 to
    constants; the exported graph still runs with batch 1 and widths of 1. Returns the
    written model (its metadata included).
    """
    history = torch.zeros((2, model.max_seq_len), dtype=torch.int64)
    exclude = torch.zeros((2, 2), dtype=torch.int64)
    batch = torch.export.Dim(BATCH_DIM)
    n_history = torch.export.Dim(HISTORY_DIM, min=1, max=model.max_seq_len)
    n_exclude = torch.export.Dim(EXCLUDE_DIM)
    # The exporter and its graph optimiser log every rewrite at INFO and warn about optional
    # torchvision ops and deprecations; none of it concerns us, and it would flood the service log.
    with warnings.catch_warnings(), _quiet_loggers("torch.onnx", "onnxscript", "onnx_ir"):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (history, exclude),
            str(path),
            input_names=[ONNX_INPUT_HISTORY, ONNX_INPUT_EXCLUDE],
            output_names=[ONNX_OUTPUT_SCORES, ONNX_OUTPUT_ITEMS],
            dynamic_shapes={"history": {0: batch, 1: n_history}, "exclude": {0: batch, 1: n_exclude}},
            opset_version=ONNX_OPSET,
            dynamo=True,
            external_data=False,  # one self-contained file: the registry hashes and moves files by name
            verbose=False,
        )
    # The history width is dynamic, so the graph's interface no longer says how long a history it
    # reads; the registry checks this property against the manifest's max_seq_len.
    graph = onnx.load(str(path))
    properties = {prop.key: prop.value for prop in graph.metadata_props}
    onnx.helper.set_model_props(graph, {**properties, MAX_HISTORY_PROPERTY: str(model.max_seq_len)})
    onnx.save(graph, str(path))
    return graph


def _real_width(histories: np.ndarray) -> int:
    """Columns from the first one holding a real item of any row (histories are left-padded)."""
    used = np.flatnonzero((np.asarray(histories) != PADDING_INDEX).any(axis=0))
    return int(histories.shape[1] - used[0]) if len(used) else 1


def check_parity(
    model: SequenceRecommender,
    model_path: Path,
    histories: np.ndarray,
    exclude: np.ndarray,
    atol: float = PARITY_ATOL,
    rtol: float = PARITY_RTOL,
) -> None:
    """Run torch and onnxruntime on the same inputs; raise ParityError unless they agree.

    Agreement means: the same top-k items in the same order and scores within ``atol + rtol*|s|``.
    The only tolerated item difference is a tie, i.e. onnxruntime returns at some rank an item whose
    torch score equals the torch score at that rank (within tolerance). That includes the -inf tail
    when fewer than k items are allowed, whose order is arbitrary.
    """
    histories = np.ascontiguousarray(histories, dtype=np.int64)
    exclude = np.ascontiguousarray(exclude, dtype=np.int64)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    ort_scores, ort_items = session.run(
        [ONNX_OUTPUT_SCORES, ONNX_OUTPUT_ITEMS], {ONNX_INPUT_HISTORY: histories, ONNX_INPUT_EXCLUDE: exclude}
    )
    with torch.no_grad():
        history_t, exclude_t = torch.from_numpy(histories), torch.from_numpy(exclude)
        torch_scores, torch_items = (t.numpy() for t in model(history_t, exclude_t))
        # Every item's score after masking, as the graph sees it before its top-k.
        all_scores = model.logits(history_t).scatter(1, exclude_t, float("-inf")).numpy()
        all_scores[:, PADDING_INDEX] = -np.inf

    if ort_items.shape != torch_items.shape:
        raise ParityError(f"onnxruntime returned shape {ort_items.shape}, torch {torch_items.shape}")
    if not np.allclose(ort_scores, torch_scores, atol=atol, rtol=rtol, equal_nan=False):
        finite = np.isfinite(torch_scores) & np.isfinite(ort_scores)
        worst = float(np.max(np.abs(ort_scores - torch_scores)[finite], initial=0.0))
        raise ParityError(f"onnxruntime and torch top-k scores differ (max abs difference {worst:.3g})")
    rows, ranks = np.nonzero(ort_items != torch_items)
    if len(rows):
        # A swap is fine only between tied items: onnxruntime's item must score what torch's does.
        ort_true_scores = all_scores[rows, ort_items[rows, ranks]]
        tied = np.isclose(ort_true_scores, torch_scores[rows, ranks], atol=atol, rtol=rtol)
        if not tied.all():
            row, rank = int(rows[~tied][0]), int(ranks[~tied][0])
            raise ParityError(
                f"onnxruntime and torch rank different items: row {row} rank {rank}: "
                f"onnxruntime item {int(ort_items[row, rank])}, torch item {int(torch_items[row, rank])}"
            )
    # The contract promises excluded and padding items never come back (unless there are fewer
    # allowed items than k, which the -inf scores mark).
    for row in range(len(ort_items)):
        returned = ort_items[row][np.isfinite(ort_scores[row])]
        forbidden = np.intersect1d(returned, np.append(exclude[row], PADDING_INDEX))
        if len(forbidden):
            raise ParityError(f"exported model returned excluded item(s) {forbidden.tolist()} in row {row}")


@contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Raise some loggers' level to ERROR for the duration of a ``with`` block."""
    loggers = [logging.getLogger(name) for name in names]
    previous = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, previous, strict=True):
            logger.setLevel(level)
