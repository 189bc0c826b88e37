"""The CLI -> trainer contract for "train now": a request to the running trainer, and its answer.

A trainer service owns its event log directory (``STREAMREC_DATA_DIR/trainer``), locked while it
runs. ``streamrec train --once`` on the same data dir does not train a second model beside it: it
leaves a request in that directory's ``requests/`` folder and waits for the answer. The trainer
runs a cycle for it (services/trainer/requests.py says which cycle answers which request) and
writes the request's progress, then its outcome, next to it.

Files, each JSON, written whole (a temporary file renamed over the old one):

- ``<id>.request.json``, by the CLI, once: the request's id, when it was made, and the end
  offsets of ``topic_user_features`` it needs trained on (``features_ends``).
- ``<id>.status.json``, by the trainer: a :class:`TrainProgress` (queued, catching up, training
  epoch k of n, then done with the model's manifest, or failed with the reason).

The CLI removes both once it has read a final state or gives up waiting. Requests older than
``REQUEST_TTL_SECONDS`` are removed by the trainer unanswered: their command is long gone.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from streamrec.shared.registry import replace_durably

REQUESTS_DIR = "requests"
REQUEST_SUFFIX = ".request.json"
STATUS_SUFFIX = ".status.json"
REQUEST_TTL_SECONDS = 3600.0

State = Literal["queued", "catching_up", "training", "done", "failed"]
FINAL_STATES = ("done", "failed")


@dataclass(frozen=True)
class TrainRequest:
    """One "train now": the model must include every event of ``topic_user_features`` before
    ``features_ends`` (partition -> end offset, read when the request was made)."""

    id: str
    requested_at: float
    features_ends: dict[int, int]

    def covered_by(self, positions: dict[int, int]) -> bool:
        """True if a log read up to ``positions`` (partition -> next offset) holds every event asked for."""
        return all(positions.get(partition, 0) >= end for partition, end in self.features_ends.items() if end)

    def to_json(self) -> bytes:
        """The request file's bytes."""
        return orjson.dumps(
            {"id": self.id, "requested_at": self.requested_at, "features_ends": self.features_ends},
            option=orjson.OPT_NON_STR_KEYS,
        )

    @classmethod
    def from_json(cls, raw: bytes) -> TrainRequest:
        """Parse a request file; ValueError if it is not one."""
        try:
            data = orjson.loads(raw)
            return cls(
                id=str(data["id"]),
                requested_at=float(data["requested_at"]),
                features_ends={int(p): int(end) for p, end in data["features_ends"].items()},
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a training request: {exc}") from None


@dataclass(frozen=True)
class TrainProgress:
    """Where the trainer is with a request: the ``<id>.status.json`` file."""

    state: State
    detail: str = ""  # e.g. "behind the cycle in progress"; for "failed", the reason
    epoch: int = 0
    epochs: int = 0  # the most epochs the cycle may run (early stopping usually ends it sooner)
    metric: dict[str, float] = field(default_factory=dict)  # the last epoch's validation metric
    manifest: dict[str, Any] | None = None  # "done": the new version's manifest (ModelManifest fields)
    promoted: bool = False  # "done": the new version is the one served now
    warning: str = ""  # "done": something the user should know (e.g. the announcement failed)
    trainer_pid: int = field(default_factory=os.getpid)
    updated_at: float = field(default_factory=time.time)

    @property
    def final(self) -> bool:
        """True once the request is answered."""
        return self.state in FINAL_STATES

    def to_json(self) -> bytes:
        """The status file's bytes."""
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> TrainProgress:
        """Parse a status file; ValueError if it is not one."""
        try:
            data = orjson.loads(raw)
            return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"not a training status: {exc}") from None


class RequestBox:
    """The ``requests/`` folder of one trainer's event log directory."""

    def __init__(self, log_directory: Path) -> None:
        self.directory = log_directory / REQUESTS_DIR

    # --- the CLI's side -------------------------------------------------------------------

    def submit(self, features_ends: dict[int, int]) -> TrainRequest:
        """Leave a request for the trainer; returns it (its id names its files)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        request = TrainRequest(
            f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}", time.time(), features_ends
        )
        replace_durably(self._request_path(request.id), request.to_json())
        return request

    def progress(self, request_id: str) -> TrainProgress | None:
        """The trainer's latest word on the request; None before it wrote any."""
        try:
            return TrainProgress.from_json(self._status_path(request_id).read_bytes())
        except (FileNotFoundError, ValueError):  # not written yet (a rename makes it appear whole)
            return None

    def withdraw(self, request_id: str) -> None:
        """Remove the request and its status (answered, or no longer waited for)."""
        self._request_path(request_id).unlink(missing_ok=True)
        self._status_path(request_id).unlink(missing_ok=True)

    # --- the trainer's side ---------------------------------------------------------------

    def pending(self, now: float | None = None) -> list[TrainRequest]:
        """Requests not answered yet, oldest first; unreadable and expired ones are removed."""
        if not self.directory.is_dir():
            return []
        now = time.time() if now is None else now
        found: list[TrainRequest] = []
        for path in self.directory.glob(f"*{REQUEST_SUFFIX}"):
            request_id = path.name.removesuffix(REQUEST_SUFFIX)
            try:
                request = TrainRequest.from_json(path.read_bytes())
            except FileNotFoundError:  # withdrawn meanwhile
                continue
            except ValueError:
                self.withdraw(request_id)
                continue
            if now - request.requested_at > REQUEST_TTL_SECONDS:
                self.withdraw(request_id)
                continue
            status = self.progress(request_id)
            if status is None or not status.final:
                found.append(request)
        for path in self.directory.glob(f"*{STATUS_SUFFIX}"):  # a request withdrawn as it was answered
            if not self._request_path(path.name.removesuffix(STATUS_SUFFIX)).exists():
                path.unlink(missing_ok=True)
        return sorted(found, key=lambda r: (r.requested_at, r.id))

    def report(self, request: TrainRequest, progress: TrainProgress) -> None:
        """Write the request's progress (or answer); nothing if the CLI withdrew it meanwhile."""
        if self._request_path(request.id).exists():
            replace_durably(self._status_path(request.id), progress.to_json())

    # --- files ------------------------------------------------------------------------------

    def _request_path(self, request_id: str) -> Path:
        return self.directory / f"{request_id}{REQUEST_SUFFIX}"

    def _status_path(self, request_id: str) -> Path:
        return self.directory / f"{request_id}{STATUS_SUFFIX}"
