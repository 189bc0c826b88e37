"""One served model version: verified from the registry, run with onnxruntime on the CPU.

:class:`ServedModel` turns users' histories (item ids, oldest first, as ingest sends them) into
ranked item ids. It owns the translation between item ids and the model's item indices: ids the
model has never seen are left out of its input, and every known item of the history is excluded
from the results (the graph removes them before its top-k, so the k results are the best allowed).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable

import numpy as np
import onnxruntime as ort

from streamrec.shared.cached_list import RankedListEncoder
from streamrec.shared.debias import popularity_rerank, popularity_terms
from streamrec.shared.logs import get_logger
from streamrec.shared.model_contract import (
    ITEM_POPULARITY_FILE,
    MODEL_FILE,
    ONNX_INPUT_EXCLUDE,
    ONNX_INPUT_HISTORY,
    ONNX_OUTPUT_ITEMS,
    ONNX_OUTPUT_SCORES,
    PADDING_INDEX,
)
from streamrec.shared.registry import ModelIntegrityError, ModelManifest, ModelRegistry

log = get_logger(__name__)

# The scorer is one process per container, typically with 2 cores: use them for one inference,
# and do not let onnxruntime spin up a thread per core of a large host.
MAX_INTRA_OP_THREADS = 2


class ServedModel:
    """A verified, loaded and warmed-up model version, ready to score batches of users."""

    def __init__(
        self,
        manifest: ModelManifest,
        vocabulary: list[str],
        session: ort.InferenceSession,
        popularity: np.ndarray | None = None,
        popularity_penalty: float = 0.0,
    ) -> None:
        if len(vocabulary) != manifest.n_items:
            raise ModelIntegrityError(
                f"model {manifest.version}: {len(vocabulary)} vocabulary items, manifest says {manifest.n_items}"
            )
        self.manifest = manifest
        self.vocabulary = vocabulary
        # Index 0 is padding, so item i (1-based) is vocabulary[i - 1].
        self.index_of: dict[str, int] = {item: i for i, item in enumerate(vocabulary, start=1)}
        self._session = session
        self.list_encoder = RankedListEncoder(vocabulary)
        # The popularity penalty (shared/debias.py) re-ranks the graph's candidates: per-index
        # terms with 0 for padding, or None when the knob is off or the version has no popularity.
        self.popularity_penalty = popularity_penalty if popularity is not None else 0.0
        self._penalty_terms: np.ndarray | None = None
        if popularity is not None and popularity_penalty > 0:
            self._penalty_terms = popularity_terms(np.concatenate([[0], popularity]))

    @property
    def version(self) -> str:
        """The registry version this model was loaded from."""
        return self.manifest.version

    @property
    def max_seq_len(self) -> int:
        """History items the model reads per user."""
        return self.manifest.max_seq_len

    @property
    def top_k(self) -> int:
        """Most items one call can return per user."""
        return self.manifest.top_k

    @classmethod
    def load(
        cls,
        registry: ModelRegistry,
        version: str,
        threads: int | None = None,
        popularity_penalty: float = 0.0,
    ) -> ServedModel:
        """Verify ``version`` (sha256 of every file, ONNX signature), load it and warm it up.

        With ``popularity_penalty`` > 0 (``STREAMREC_SCORER_POPULARITY_PENALTY``), lists are
        re-ranked by :func:`~streamrec.shared.debias.popularity_rerank` with the version's
        ``item_popularity.npy``; a version without that file is served without the penalty (logged).
        Raises :class:`ModelIntegrityError` with a clear message if the version is incomplete,
        corrupt, does not match the model contract, or fails its warm-up inference.
        """
        started = time.perf_counter()
        manifest = registry.verify(version)
        vocabulary = registry.vocabulary(version)
        popularity = load_item_popularity(registry, manifest) if popularity_penalty > 0 else None
        if popularity_penalty > 0 and popularity is None:
            log.warning(
                "model has no item popularity: popularity penalty off for it",
                extra={"model_version": version, "popularity_penalty": popularity_penalty},
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(MAX_INTRA_OP_THREADS, os.cpu_count() or 1)
        options.inter_op_num_threads = 1  # the graph is a short chain; parallel branches gain nothing
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle worker threads would busy-wait after every batch, taking the cores ingest and the
        # broker share with the scorer; a batch's wake-up costs microseconds, batches come every ms.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(
                str(registry.path(version) / MODEL_FILE), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ModelIntegrityError(f"model {version}: onnxruntime cannot load it: {exc}") from None
        model = cls(manifest, vocabulary, session, popularity, popularity_penalty)
        try:
            # The first run allocates buffers and finalises kernels; do it before real traffic,
            # and refuse a model that cannot even score one user.
            model.recommend([vocabulary[:1]], k=1)
        except Exception as exc:
            raise ModelIntegrityError(f"model {version}: warm-up inference failed: {exc}") from None
        log.info(
            "model loaded",
            extra={
                "model_version": version,
                "items": manifest.n_items,
                "max_seq_len": manifest.max_seq_len,
                "top_k": manifest.top_k,
                "popularity_penalty": model.popularity_penalty,
                "load_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        return model

    @property
    def fixed_history_width(self) -> int | None:
        """The history width the graph requires, or None if it takes any width up to max_seq_len
        (versions exported before dynamic widths require exactly max_seq_len)."""
        width = self.manifest.signature["inputs"][ONNX_INPUT_HISTORY]["shape"][1]
        return width if isinstance(width, int) else None

    def known_items(self, history: list[str]) -> list[int]:
        """Indices of the history's items the model knows, in history order (unknown ids skipped)."""
        index_of = self.index_of
        return [index_of[item] for item in history if item in index_of]

    def indices(self, items: Iterable[str]) -> np.ndarray:
        """The model's indices of those ``items`` it knows (int64), e.g. to block them for everyone."""
        index_of = self.index_of
        return np.array(sorted({index_of[item] for item in items if item in index_of}), dtype=np.int64)

    def encode(
        self, histories: list[list[str]], blocked: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The model inputs for a batch: (history [B, W], exclude [B, E]), both int64.

        ``history`` holds each user's last ``max_seq_len`` known items, left-padded with 0 so the
        most recent item is last; W is the longest of them (the model's cost grows with W), or
        ``max_seq_len`` for a fixed-width model. ``exclude`` holds every known item of the full
        history, and the indices ``blocked`` for every user (items that may not be served).
        """
        known = [self.known_items(history) for history in histories]
        recent = [items[-self.max_seq_len :] for items in known]
        excluded = [sorted(set(items)) for items in known]
        # At least one column: a 0-width tensor is legal ONNX but not worth testing every exporter on.
        width = self.fixed_history_width or max([1, *map(len, recent)])
        own = max(map(len, excluded), default=0)
        n_blocked = 0 if blocked is None else len(blocked)
        model_input = np.full((len(histories), width), PADDING_INDEX, dtype=np.int64)
        exclude = np.full((len(histories), max(1, own + n_blocked)), PADDING_INDEX, dtype=np.int64)
        for row, items in enumerate(recent):
            if items:
                model_input[row, width - len(items) :] = items
            exclude[row, : len(excluded[row])] = excluded[row]
        if n_blocked:
            exclude[:, own:] = blocked  # a repeated index excludes nothing more: no need to dedupe
        return model_input, exclude

    def rank(
        self, histories: list[list[str]], k: int, blocked: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The graph's top ``k`` per history as arrays: (scores float32 [B, k'], items int64 [B, k']),
        best first, with k' = min(k, top_k), never an index of ``blocked``. Masked entries (score
        -inf) may end a row: see :meth:`recommend`, and :class:`RankedListEncoder`, which both drop them.

        With the popularity penalty on, the graph's top_k candidates are re-ranked first and the
        scores are the re-ranked ones (:func:`~streamrec.shared.debias.popularity_rerank`)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        model_input, exclude = self.encode(histories, blocked)
        scores, items = self._session.run(
            [ONNX_OUTPUT_SCORES, ONNX_OUTPUT_ITEMS],
            {ONNX_INPUT_HISTORY: model_input, ONNX_INPUT_EXCLUDE: exclude},
        )
        if self._penalty_terms is not None:
            return popularity_rerank(scores, items, self._penalty_terms, self.popularity_penalty, k)
        return scores[:, :k], items[:, :k]

    def recommend_encoded(
        self, histories: list[list[str]], k: int, generated_at: float, blocked: np.ndarray | None = None
    ) -> list[bytes]:
        """Each history's top ``k`` as the Redis value of a personal list (the binary format), in bulk:
        what ``CachedList(recommend(...)[i], version, generated_at, "personal").encode()`` gives."""
        if not histories:
            return []
        scores, items = self.rank(histories, k, blocked)
        return self.list_encoder.encode(items, scores, self.version, generated_at)

    def recommend(
        self, histories: list[list[str]], k: int, blocked: np.ndarray | None = None
    ) -> list[list[tuple[str, float]]]:
        """Top ``k`` (item id, score) per history, best first, never an item of that history or of
        ``blocked`` (model indices, see :meth:`indices`).

        ``k`` is capped by the model's ``top_k``; fewer items come back when the history excludes
        so much of the catalogue that only masked (-inf) scores remain.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not histories:
            return []
        scores, items = self.rank(histories, k, blocked)
        vocabulary = self.vocabulary
        n_items = len(vocabulary)
        results: list[list[tuple[str, float]]] = []
        for row_scores, row_items in zip(scores.tolist(), items.tolist(), strict=True):
            results.append(
                [
                    (vocabulary[index - 1], score)
                    for score, index in zip(row_scores, row_items, strict=True)
                    # -inf marks a masked item (excluded or padding) that filled the top-k tail.
                    if math.isfinite(score) and 1 <= index <= n_items
                ]
            )
        return results


def load_item_popularity(registry: ModelRegistry, manifest: ModelManifest) -> np.ndarray | None:
    """The version's training interactions per item, int64 [n_items], or None if it has none
    (versions exported before the file existed).

    The file's sha256 is checked by ``registry.verify`` with the others; raises
    ModelIntegrityError if it is unreadable, of the wrong shape or holds negative counts."""
    if ITEM_POPULARITY_FILE not in manifest.files:
        return None
    try:
        popularity = np.load(registry.path(manifest.version) / ITEM_POPULARITY_FILE, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelIntegrityError(
            f"model {manifest.version}: {ITEM_POPULARITY_FILE} is unreadable: {exc}"
        ) from None
    if popularity.shape != (manifest.n_items,) or not np.issubdtype(popularity.dtype, np.integer):
        raise ModelIntegrityError(
            f"model {manifest.version}: {ITEM_POPULARITY_FILE} has shape {popularity.shape} and dtype "
            f"{popularity.dtype}, expected integers [{manifest.n_items}]"
        )
    if (popularity < 0).any():
        raise ModelIntegrityError(f"model {manifest.version}: {ITEM_POPULARITY_FILE} holds negative counts")
    return popularity.astype(np.int64, copy=False)
