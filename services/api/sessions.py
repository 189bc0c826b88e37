"""Anonymous sessions: a list of recent items scored on demand with the served ONNX model.

:class:`SessionScorer` holds a :class:`~streamrec.scorer.model_runtime.ServedModel` in a reader's
process (the HTTP API, or an application using ``RecommendationClient.recommend_session``). The
version it serves is the one the scorer serves (``RedisKeys.model``), so a session and a user's
cached list come from the same model, and a version the scorer refused is not served here either;
with nothing in Redis (no scorer yet) it is the registry's ``PROMOTED``.

Hot swap, as in the scorer: a new version is verified, loaded and warmed up in a background thread
while the old one keeps scoring, then swapped in with one assignment; a version that fails any of
that is refused and never tried again. Readers check for a new version at most every
:data:`CHECK_SECONDS`; only the very first load (nothing to serve yet) is waited for.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from streamrec.scorer.model_runtime import ServedModel
from streamrec.shared.logs import get_logger
from streamrec.shared.registry import ModelIntegrityError, ModelRegistry
from streamrec.shared.settings import Settings

log = get_logger(__name__)

CHECK_SECONDS = 5.0  # a reader looks for a newly served version this often
# One inference per request: a second thread would not shorten it (the graph runs one small row)
# and would take a core from the request handling.
SESSION_THREADS = 1


@dataclass(frozen=True, slots=True)
class RankedSession:
    """The model's ranking for one session (best first, the session's items already left out)."""

    items: list[tuple[str, float]]
    model_version: str
    generated_at: float


class SessionScorer:
    """The served model in a reader's process, swapped when another version is served."""

    def __init__(self, settings: Settings, check_seconds: float = CHECK_SECONDS) -> None:
        self.registry = ModelRegistry(settings.model_dir)  # type: ignore[arg-type]  # set by Settings
        self.popularity_penalty = settings.scorer_popularity_penalty  # the scorer's rule, here too
        self.check_seconds = check_seconds
        self.model: ServedModel | None = None
        self.refused: set[str] = set()
        self._loading: str | None = None
        self._lock = threading.Lock()
        self._next_check = 0.0

    def due(self) -> bool:
        """True when it is time to look for a newly served version (see :meth:`refresh`)."""
        return time.monotonic() >= self._next_check

    def refresh(self, served: str | None, wait: bool = False) -> None:
        """Serve ``served`` (the scorer's version from Redis; None: the registry's PROMOTED) if it is
        new: loaded in a background thread, or in this call with ``wait``."""
        self._next_check = time.monotonic() + self.check_seconds
        version = served or self.registry.promoted_version()
        current = self.model.version if self.model is not None else None
        if version is None or version == current or version in self.refused:
            return
        with self._lock:
            if self._loading is not None:
                return  # a load is in progress; the next check sees what it gave
            self._loading = version
        if wait:
            self._load(version)
        else:
            threading.Thread(target=self._load, args=(version,), name="session-model", daemon=True).start()

    def _load(self, version: str) -> None:
        previous = self.model.version if self.model is not None else None
        try:
            model = ServedModel.load(
                self.registry, version, threads=SESSION_THREADS, popularity_penalty=self.popularity_penalty
            )
        except (ModelIntegrityError, OSError) as exc:
            self.refused.add(version)
            log.error(
                "session model refused, keeping the current one",
                extra={"model_version": version, "serving": previous, "error": str(exc)},
            )
        else:
            self.model = model  # the swap: a request in flight keeps the model it already took
            log.info("session model swapped", extra={"model_version": version, "previous": previous})
        finally:
            self._loading = None

    def rank(self, history: list[str]) -> RankedSession | None:
        """The model's top ``top_k`` for a session's items (oldest first; unknown ids ignored), or None
        with no model or no item it knows."""
        model = self.model
        if model is None or not model.known_items(history):
            return None
        ranked = model.recommend([history], k=model.top_k)[0]
        return RankedSession(ranked, model.version, time.time())
