"""Which model version a scorer serves: the registry's PROMOTED at start-up and when it changes,
and every version announced on ``topic_models``. A version is handed to the loop only once it is
verified, loaded and warmed up; a broken one is refused (and never tried again) and the old one
keeps serving."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from streamrec.scorer.metrics import MODELS_REFUSED
from streamrec.scorer.model_runtime import ServedModel
from streamrec.scorer.similar_items import load_item_embeddings
from streamrec.shared.logs import get_logger
from streamrec.shared.registry import ModelIntegrityError, ModelRegistry

log = get_logger(__name__)

PROMOTED_CHECK_SECONDS = 10.0  # re-read the registry's PROMOTED this often (covers lost announcements)
STARTUP_FALLBACK_VERSIONS = 3  # earlier promoted versions tried at start-up when PROMOTED is refused


@dataclass(frozen=True, slots=True)
class ModelSwap:
    """A loaded model version for the loop to serve, and why."""

    model: ServedModel
    embeddings: np.ndarray | None  # its item embeddings, for similar items (None if it has none)
    previous: str | None  # the version served until now
    reason: str


class ModelSwitcher:
    """Loads the versions to serve from the registry; remembers the refused ones and PROMOTED."""

    def __init__(self, registry: ModelRegistry, threads: int, popularity_penalty: float) -> None:
        self.registry = registry
        self.threads = threads
        self.popularity_penalty = popularity_penalty
        self.refused: set[str] = set()
        self.promoted_seen: str | None = None
        self.next_promoted_check = 0.0  # monotonic

    def load(self, version: str, current: str | None, reason: str) -> ModelSwap | None:
        """``version`` loaded, verified and warmed up, or None if it is ``current``, was refused
        before or is refused now."""
        if version == current or version in self.refused:
            return None
        try:
            model = ServedModel.load(
                self.registry, version, threads=self.threads, popularity_penalty=self.popularity_penalty
            )
            embeddings = load_item_embeddings(self.registry, version, model.manifest.n_items)
        except (ModelIntegrityError, OSError) as exc:
            self.refused.add(version)
            MODELS_REFUSED.inc()
            log.error(
                "model refused, keeping the current one",
                extra={"model_version": version, "serving": current, "reason": reason, "error": str(exc)},
            )
            return None
        return ModelSwap(model, embeddings, current, reason)

    def at_startup(self) -> ModelSwap | None:
        """The registry's PROMOTED version, or the newest earlier promoted one that loads."""
        promoted = self.promoted_seen = self.registry.promoted_version()
        if promoted is None:
            log.info(
                "no promoted model in the registry yet: serving popular items",
                extra={"registry": str(self.registry.root)},
            )
            return None
        if swap := self.load(promoted, None, reason="registry PROMOTED"):
            return swap
        # A refused PROMOTED must not leave a restarted scorer without any model: fall back to the
        # newest earlier *promoted* version that verifies (a running scorer would have kept serving
        # it); rejected and rolled-back versions are never candidates.
        earlier = [version for version in reversed(self.registry.promotion_stack()) if version != promoted]
        for version in earlier[:STARTUP_FALLBACK_VERSIONS]:
            if swap := self.load(version, None, "PROMOTED refused: newest usable earlier promoted version"):
                return swap
        return None

    def promoted_changed(self, current: str | None) -> ModelSwap | None:
        """Every PROMOTED_CHECK_SECONDS: the registry's PROMOTED version if it changed and loads."""
        now = time.monotonic()
        if now < self.next_promoted_check:
            return None
        self.next_promoted_check = now + PROMOTED_CHECK_SECONDS
        promoted = self.registry.promoted_version()
        # React to PROMOTED *changing* (not differing from the served model), so a refused
        # version or an announced one that PROMOTED lags behind does not cause flapping.
        if promoted is not None and promoted != self.promoted_seen:
            self.promoted_seen = promoted
            return self.load(promoted, current, reason="registry PROMOTED changed")
        return None
