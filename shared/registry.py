"""The versioned model registry: a directory of immutable model versions plus a PROMOTED pointer.

Layout::

    <root>/
      PROMOTED                        # text: the version scorers serve
      promotions.jsonl                # append-only log of promotions and rollbacks
      20261129T052000.123Z-1a2b3c/    # one directory per version; its model files never change
        manifest.json                 # ModelManifest: sha256 of every file, signature, metrics, status
        model.onnx
        items.json
      .staging-<random>/              # a version being written (invisible to readers)

Lifecycle: the trainer writes a version into a staging directory under the root and
:meth:`ModelRegistry.publish` renames it into place as a *candidate*. The quality gate then either
promotes it (:meth:`~ModelRegistry.promote`: PROMOTED points at it) or rejects it
(:meth:`~ModelRegistry.reject`); :meth:`~ModelRegistry.rollback` moves PROMOTED back to the version promoted before and marks the
current one *rolled-back*. Every pointer or manifest change is a write to a temporary file and an
atomic rename, so readers (the scorer) only ever see complete versions and whole files, and
:meth:`ModelRegistry.verify` re-checks every model file against its manifest. A manifest's only
changing fields are ``status``, ``status_reason`` and the gate's holdout metrics; model files are
covered by sha256.

One writer at a time (the trainer, or an operator's ``streamrec models`` command).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import MISSING, asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from streamrec.shared.logs import get_logger
from streamrec.shared.model_contract import (
    MANIFEST_FILE,
    MODEL_FILE,
    ONNX_INPUT_EXCLUDE,
    ONNX_INPUT_HISTORY,
    ONNX_OUTPUT_ITEMS,
    ONNX_OUTPUT_SCORES,
    PROMOTED_FILE,
    PROMOTIONS_FILE,
    VOCAB_FILE,
)

log = get_logger(__name__)

STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"  # a pruned version being deleted (renamed first, so it vanishes at once)

# Status of a version (ModelManifest.status).
CANDIDATE = "candidate"  # published, not (yet) judged by the quality gate
PROMOTED = "promoted"  # passed the gate (or promoted by hand); PROMOTED names the one served now
REJECTED = "rejected"  # failed the gate; status_reason says why
ROLLED_BACK = "rolled-back"  # was served, then rolled back
STATUSES = (CANDIDATE, PROMOTED, REJECTED, ROLLED_BACK)
REQUIRED_FILES = (MODEL_FILE, VOCAB_FILE)
# Dynamic ONNX dimensions are named, static ones are ints; these names are what the exporter uses.
BATCH_DIM = "batch"
EXCLUDE_DIM = "n_exclude"
HISTORY_DIM = "n_history"  # 1..max_seq_len: the scorer sends each batch only as wide as it needs
# The ONNX metadata property holding the longest history a graph of dynamic width reads.
MAX_HISTORY_PROPERTY = "streamrec.max_seq_len"
# A version is a plain directory name: no separators, no leading dot (so never a staging dir).
_VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HASH_CHUNK = 1 << 20


class ModelIntegrityError(Exception):
    """A model version is unusable: missing file, sha256 mismatch, bad manifest or signature."""


class RegistryError(Exception):
    """A lifecycle operation is not possible (unknown version, nothing to roll back to, …)."""


@dataclass(frozen=True)
class ModelManifest:
    """Everything known about one model version; stored as ``manifest.json`` next to its files."""

    version: str
    created_at: float
    model_type: str
    parent_version: str | None
    n_items: int
    max_seq_len: int
    top_k: int
    opset: int
    files: dict[str, str]  # file name -> sha256 hex (model.onnx, items.json)
    signature: dict[str, Any]  # {"inputs": {name: {dtype, shape}}, "outputs": {name: {dtype, shape}}}
    metrics: dict[str, float]  # e.g. val_ndcg@10, val_hr@10, best_epoch, train_seconds, final_loss
    data: dict[str, Any]  # events, users, items, window_start, window_end (given by the trainer)
    curve: list[dict[str, Any]] = field(default_factory=list)  # per epoch: loss, validation metric, s
    # Set by the lifecycle after publishing (the only fields that change; model files never do):
    status: str = CANDIDATE  # one of STATUSES
    status_reason: str = ""

    def to_json(self) -> bytes:
        """Serialise as indented, key-sorted JSON (stable bytes, readable by people)."""
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"

    @classmethod
    def from_json(cls, raw: bytes | str) -> ModelManifest:
        """Parse a manifest; raise ModelIntegrityError if it is not valid JSON or misses fields."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ModelIntegrityError(f"manifest is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ModelIntegrityError("manifest is not a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelManifest:
        """A manifest from its fields; raise ModelIntegrityError if required ones are missing."""
        # Unknown keys are ignored so that a newer trainer's manifest stays readable by an older scorer.
        fields = cls.__dataclass_fields__
        missing = [
            name
            for name, spec in fields.items()
            if name not in data and spec.default is MISSING and spec.default_factory is MISSING
        ]
        if missing:
            raise ModelIntegrityError(f"manifest misses field(s): {', '.join(missing)}")
        return cls(**{name: data[name] for name in fields if name in data})


def expected_signature(
    max_seq_len: int, top_k: int, history_width: str | int = HISTORY_DIM
) -> dict[str, Any]:
    """The ONNX signature the model contract (shared/model_contract.py) requires, in manifest form.

    The exporter writes a history of dynamic width (``HISTORY_DIM``); ``history_width=max_seq_len``
    gives the fixed-width form of versions exported before, which are still served."""
    return {
        "inputs": {
            ONNX_INPUT_HISTORY: {"dtype": "int64", "shape": [BATCH_DIM, history_width]},
            ONNX_INPUT_EXCLUDE: {"dtype": "int64", "shape": [BATCH_DIM, EXCLUDE_DIM]},
        },
        "outputs": {
            ONNX_OUTPUT_SCORES: {"dtype": "float32", "shape": [BATCH_DIM, top_k]},
            ONNX_OUTPUT_ITEMS: {"dtype": "int64", "shape": [BATCH_DIM, top_k]},
        },
    }


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks (model files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def new_version() -> str:
    """A new, unique version name that sorts by creation time, e.g. ``20261129T052000.123Z-1a2b3c``."""
    now = datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


class ModelRegistry:
    """A directory of published model versions. Safe for one writer and any number of readers."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # --- read side (scorer) ----------------------------------------------------------------

    def versions(self) -> list[str]:
        """Published versions, oldest first (version names sort by creation time)."""
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir() and _VERSION_PATTERN.match(entry.name) and (entry / MANIFEST_FILE).is_file()
        )

    def newest_version(self) -> str | None:
        """The most recently published version, whatever its status, or None."""
        versions = self.versions()
        return versions[-1] if versions else None

    def promoted_version(self) -> str | None:
        """The version PROMOTED points at (the one scorers serve), or None if none was promoted."""
        try:
            text = (self.root / PROMOTED_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    def path(self, version: str) -> Path:
        """Directory of a version (it may not exist). Rejects names that could escape the root."""
        if not _VERSION_PATTERN.match(version):
            raise ModelIntegrityError(f"invalid model version name {version!r}")
        return self.root / version

    def manifest(self, version: str) -> ModelManifest:
        """Read a version's manifest (without checking its files; see :meth:`verify`)."""
        manifest_path = self.path(version) / MANIFEST_FILE
        try:
            raw = manifest_path.read_bytes()
        except FileNotFoundError:
            raise ModelIntegrityError(
                f"model {version}: no {MANIFEST_FILE} in {manifest_path.parent}"
            ) from None
        try:
            manifest = ModelManifest.from_json(raw)
        except ModelIntegrityError as exc:
            raise ModelIntegrityError(f"model {version}: {exc}") from None
        if manifest.version != version:
            raise ModelIntegrityError(f"model {version}: manifest names version {manifest.version!r}")
        return manifest

    def verify(self, version: str) -> ModelManifest:
        """Check a version is complete and untouched; return its manifest.

        Recomputes the sha256 of every file listed in the manifest, checks the required files are
        listed, and checks the signature both in the manifest and in the ONNX graph itself matches
        the model contract. Raises ModelIntegrityError saying exactly what is wrong.
        """
        manifest = self.manifest(version)
        try:
            check_model_dir(self.path(version), manifest)
        except ModelIntegrityError as exc:
            raise ModelIntegrityError(f"model {version}: {exc}") from None
        return manifest

    def vocabulary(self, version: str) -> list[str]:
        """The item ids of a version: ``vocabulary[i - 1]`` is the id of item index ``i``."""
        try:
            return read_vocabulary(self.path(version) / VOCAB_FILE)
        except ModelIntegrityError as exc:
            raise ModelIntegrityError(f"model {version}: {exc}") from None

    # --- write side (trainer) --------------------------------------------------------------

    def new_staging_dir(self) -> Path:
        """A fresh, empty directory under the root to write a version into before publishing.

        It lives under the root so that :meth:`publish` is a same-filesystem rename.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))

    def publish(self, staging_dir: Path, manifest: ModelManifest) -> Path:
        """Make a staged version visible as a candidate; return the version's directory.

        Writes the manifest into the staging directory, checks the staged files against it, then
        renames the directory to ``root/<version>``: a single rename, so a crash leaves either no
        version or a complete one (at worst an orphaned ``.staging-*`` directory, which readers
        ignore). Nothing is served until the version is promoted.
        """
        staging_dir = Path(staging_dir)
        if staging_dir.resolve().parent != self.root.resolve():
            raise ValueError(f"staging dir {staging_dir} is not directly under {self.root}")
        target = self.path(manifest.version)
        if target.exists():
            raise FileExistsError(f"model version {manifest.version} already exists in {self.root}")

        # Refuse to publish anything verify() would reject; then make the files durable before
        # the rename makes them visible.
        try:
            check_model_dir(staging_dir, manifest)
        except ModelIntegrityError as exc:
            raise ModelIntegrityError(f"refusing to publish model {manifest.version}: {exc}") from None
        _write_durably(staging_dir / MANIFEST_FILE, manifest.to_json())
        for name in manifest.files:
            _fsync_file(staging_dir / name)
        _fsync_dir(staging_dir)

        os.rename(staging_dir, target)
        _fsync_dir(self.root)
        log.info(
            "model published",
            extra={
                "model_version": manifest.version,
                "parent_version": manifest.parent_version,
                "status": manifest.status,
                "path": str(target),
            },
        )
        return target

    def promote(self, version: str, reason: str, metrics: dict[str, float] | None = None) -> ModelManifest:
        """Verify ``version`` and make it the served one (PROMOTED); log the promotion. ``metrics``
        (e.g. the gate's holdout numbers) are added to the manifest's."""
        manifest = self.verify(version)
        manifest = self._set_status(manifest, PROMOTED, reason, metrics)
        self._append_promotion({"action": "promote", "version": version, "reason": reason})
        self._point_at(PROMOTED_FILE, version)
        log.info("model promoted", extra={"model_version": version, "reason": reason})
        return manifest

    def reject(self, version: str, reason: str, metrics: dict[str, float] | None = None) -> ModelManifest:
        """Mark a candidate rejected (it is never served unless promoted by hand later)."""
        manifest = self._set_status(self.manifest(version), REJECTED, reason, metrics)
        log.warning("model rejected", extra={"model_version": version, "reason": reason})
        return manifest

    def rollback_target(self) -> str | None:
        """The version a rollback would serve: the one promoted before the current one."""
        stack = self.promotion_stack()
        return stack[-2] if len(stack) >= 2 else None

    def rollback(self, reason: str) -> tuple[str, ModelManifest]:
        """Serve the previously promoted version again; the current one becomes rolled-back.

        Returns (the version rolled back from, the manifest now served). Raises RegistryError when
        nothing is promoted or there is no earlier promoted version, ModelIntegrityError when the
        earlier version no longer verifies (nothing changes then).
        """
        current = self.promoted_version()
        target = self.rollback_target()
        if current is None or target is None:
            raise RegistryError(
                "nothing to roll back to: "
                + ("no version is promoted" if current is None else f"{current} is the only promoted version")
            )
        manifest = self.verify(target)
        self._set_status(self.manifest(current), ROLLED_BACK, reason)
        self._append_promotion({"action": "rollback", "version": target, "from": current, "reason": reason})
        self._point_at(PROMOTED_FILE, target)
        log.warning("model rolled back", extra={"model_version": target, "from": current, "reason": reason})
        return current, manifest

    def prune(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest versions, never the promoted one nor the rollback
        target. Returns the deleted versions. Each is renamed away first, so it vanishes at once."""
        if keep < 1:
            raise ValueError("keep at least one version")
        protected = {self.promoted_version(), self.rollback_target()}
        versions = self.versions()
        doomed = [version for version in versions[:-keep] if version not in protected]
        for version in doomed:
            trash = self.root / f"{TRASH_PREFIX}{version}"
            os.rename(self.path(version), trash)
            shutil.rmtree(trash, ignore_errors=True)
        if doomed:
            _fsync_dir(self.root)
            log.info(
                "old model versions deleted", extra={"deleted": doomed, "kept": len(versions) - len(doomed)}
            )
        return doomed

    def promotions(self) -> list[dict[str, Any]]:
        """The promotion log, oldest first: {"action": "promote"|"rollback", "version", "at", …}."""
        try:
            lines = (self.root / PROMOTIONS_FILE).read_bytes().splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for line in lines:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn last line after a crash: the pointer file is the truth
            if isinstance(entry, dict) and isinstance(entry.get("version"), str):
                entries.append(entry)
        return entries

    def promotion_stack(self) -> list[str]:
        """Replay the log: promoted versions, oldest first, the current one last (rolled-back ones
        popped). Versions deleted from disk are skipped."""
        stack: list[str] = []
        for entry in self.promotions():
            if entry.get("action") == "promote":
                if entry["version"] in stack:
                    stack.remove(entry["version"])
                stack.append(entry["version"])
            elif entry.get("action") == "rollback" and stack and stack[-1] == entry.get("from"):
                stack.pop()
        present = set(self.versions())
        return [version for version in stack if version in present]

    def _set_status(
        self, manifest: ModelManifest, status: str, reason: str, metrics: dict[str, float] | None = None
    ) -> ModelManifest:
        updated = replace(
            manifest, status=status, status_reason=reason, metrics=manifest.metrics | (metrics or {})
        )
        replace_durably(self.path(manifest.version) / MANIFEST_FILE, updated.to_json())
        return updated

    def _append_promotion(self, entry: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = orjson.dumps({"at": time.time(), **entry}) + b"\n"
        with open(self.root / PROMOTIONS_FILE, "ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def _point_at(self, pointer: str, version: str) -> None:
        """Replace a pointer file atomically: write a temporary file, fsync it, rename it over."""
        self.root.mkdir(parents=True, exist_ok=True)
        replace_durably(self.root / pointer, f"{version}\n".encode())


def check_model_dir(directory: Path, manifest: ModelManifest) -> None:
    """Check the files in ``directory`` against ``manifest``; raise ModelIntegrityError if any differs."""
    unlisted = [name for name in REQUIRED_FILES if name not in manifest.files]
    if unlisted:
        raise ModelIntegrityError(f"manifest does not list {', '.join(unlisted)}")
    for name, expected in manifest.files.items():
        if Path(name).name != name or name.startswith("."):
            raise ModelIntegrityError(f"manifest lists a path, not a plain file name: {name!r}")
        file_path = directory / name
        if not file_path.is_file():
            raise ModelIntegrityError(f"file {name} is missing")
        actual = sha256_file(file_path)
        if actual != expected:
            raise ModelIntegrityError(
                f"{name} is corrupt: sha256 is {actual[:12]}…, the manifest says {expected[:12]}…"
            )
    contract = expected_signature(manifest.max_seq_len, manifest.top_k)
    accepted = (contract, expected_signature(manifest.max_seq_len, manifest.top_k, manifest.max_seq_len))
    if manifest.signature not in accepted:
        raise ModelIntegrityError(
            f"manifest signature {manifest.signature} does not match the model contract {contract}"
        )
    graph = _load_graph(directory / MODEL_FILE)
    in_graph = _signature_of(graph)
    if in_graph != manifest.signature:
        raise ModelIntegrityError(
            f"{MODEL_FILE} has signature {in_graph}, the manifest says {manifest.signature}"
        )
    if manifest.signature == contract:
        # A dynamic history width says nothing of the longest history the graph reads: that is
        # in its metadata (the exporter writes it), and must be the manifest's max_seq_len.
        declared = {prop.key: prop.value for prop in graph.metadata_props}.get(MAX_HISTORY_PROPERTY)
        if declared != str(manifest.max_seq_len):
            raise ModelIntegrityError(
                f"{MODEL_FILE} reads at most {declared or 'an undeclared number of'} history items "
                f"({MAX_HISTORY_PROPERTY}), the manifest says {manifest.max_seq_len}"
            )
    n_vocab = len(read_vocabulary(directory / VOCAB_FILE))
    if n_vocab != manifest.n_items:
        raise ModelIntegrityError(f"{VOCAB_FILE} has {n_vocab} items, the manifest says {manifest.n_items}")


def read_vocabulary(path: Path) -> list[str]:
    """Read an items.json vocabulary; raise ModelIntegrityError if it is missing or malformed."""
    try:
        items = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ModelIntegrityError(f"file {path.name} is missing") from None
    except orjson.JSONDecodeError as exc:
        raise ModelIntegrityError(f"{path.name} is not valid JSON: {exc}") from None
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ModelIntegrityError(f"{path.name} is not a JSON list of strings")
    return items


def onnx_signature(model_path: Path) -> dict[str, Any]:
    """Read the input/output names, dtypes and shapes of an ONNX file, in manifest form."""
    return _signature_of(_load_graph(model_path))


def _load_graph(model_path: Path) -> Any:
    """The ONNX model's protobuf, without weights in external files (the interface is enough)."""
    import onnx  # imported here: only verify() needs it, and it is slow to import

    try:
        return onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises several types for a damaged protobuf
        raise ModelIntegrityError(f"{model_path.name} is not a readable ONNX model: {exc}") from None


def _signature_of(model: Any) -> dict[str, Any]:
    import onnx

    def describe(values: Any) -> dict[str, Any]:
        described = {}
        for value in values:
            tensor = value.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            shape = [
                dim.dim_param if dim.HasField("dim_param") else dim.dim_value for dim in tensor.shape.dim
            ]
            described[value.name] = {"dtype": dtype, "shape": shape}
        return described

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def replace_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path`` (atomic)."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    # A rename is only durable once the directory holding the entry is synced (POSIX).
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
