"""The versioned model registry: a directory of immutable model versions plus a LATEST pointer.

Layout::

    <root>/
      LATEST                          # text: the version the scorer should serve
      20261129T052000.123Z-1a2b3c/    # one directory per version, never modified once published
        manifest.json                 # ModelManifest: sha256 of every file, ONNX signature, metrics
        model.onnx
        items.json
      .staging-<random>/              # a version being written (invisible to readers)

The trainer writes a version into a staging directory under the root, then :meth:`ModelRegistry.publish`
renames it into place and replaces LATEST, both atomically. Readers (the scorer) only ever see
complete versions, and :meth:`ModelRegistry.verify` re-checks every file against its manifest.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from .contracts import (
    LATEST_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    ONNX_INPUT_EXCLUDE,
    ONNX_INPUT_HISTORY,
    ONNX_OUTPUT_ITEMS,
    ONNX_OUTPUT_SCORES,
    VOCAB_FILE,
)
from .logs import get_logger

log = get_logger(__name__)

STAGING_PREFIX = ".staging-"
REQUIRED_FILES = (MODEL_FILE, VOCAB_FILE)
# Dynamic ONNX dimensions are named, static ones are ints; these names are what the exporter uses.
BATCH_DIM = "batch"
EXCLUDE_DIM = "n_exclude"
# A version is a plain directory name: no separators, no leading dot (so never a staging dir).
_VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HASH_CHUNK = 1 << 20


class ModelIntegrityError(Exception):
    """A model version is unusable: missing file, sha256 mismatch, bad manifest or signature."""


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
        # Unknown keys are ignored so that a newer trainer's manifest stays readable by an older scorer.
        missing = [name for name in cls.__dataclass_fields__ if name not in data]
        if missing:
            raise ModelIntegrityError(f"manifest misses field(s): {', '.join(missing)}")
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def expected_signature(max_seq_len: int, top_k: int) -> dict[str, Any]:
    """The ONNX signature the model contract (shared/contracts.py) requires, in manifest form."""
    return {
        "inputs": {
            ONNX_INPUT_HISTORY: {"dtype": "int64", "shape": [BATCH_DIM, max_seq_len]},
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

    def latest_version(self) -> str | None:
        """The version LATEST points at, or None if nothing was published yet."""
        try:
            text = (self.root / LATEST_FILE).read_text(encoding="utf-8").strip()
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
        """Make a staged version visible and point LATEST at it; return the version's directory.

        Writes the manifest into the staging directory, checks the staged files against it, then
        renames the directory to ``root/<version>`` and atomically replaces LATEST. Both steps are
        single renames, so a crash leaves either the old state or the new one, never a half model
        (at worst an orphaned ``.staging-*`` directory, which readers ignore).
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
        self._point_latest_at(manifest.version)
        log.info(
            "model published",
            extra={
                "model_version": manifest.version,
                "parent_version": manifest.parent_version,
                "path": str(target),
            },
        )
        return target

    def _point_latest_at(self, version: str) -> None:
        """Replace LATEST atomically: write a temporary file, fsync it, rename it over LATEST."""
        fd, tmp_name = tempfile.mkstemp(prefix=f".{LATEST_FILE}-", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(f"{version}\n".encode())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, self.root / LATEST_FILE)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)


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
    if manifest.signature != contract:
        raise ModelIntegrityError(
            f"manifest signature {manifest.signature} does not match the model contract {contract}"
        )
    in_graph = onnx_signature(directory / MODEL_FILE)
    if in_graph != contract:
        raise ModelIntegrityError(f"{MODEL_FILE} has signature {in_graph}, the contract needs {contract}")
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
    import onnx  # imported here: only verify() needs it, and it is slow to import

    try:
        # Only the graph's interface is needed; weights in external files are not loaded.
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises several types for a damaged protobuf
        raise ModelIntegrityError(f"{model_path.name} is not a readable ONNX model: {exc}") from None

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
