"""The model registry: atomic publish, lifecycle (promote, reject, rollback, prune), integrity checks."""

from __future__ import annotations

import os
import time
from pathlib import Path

import onnx
import orjson
import pytest
from onnx import TensorProto, helper

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
from streamrec.shared.registry import (
    BATCH_DIM,
    CANDIDATE,
    EXCLUDE_DIM,
    HISTORY_DIM,
    MAX_HISTORY_PROPERTY,
    PROMOTED,
    REJECTED,
    ROLLED_BACK,
    ModelIntegrityError,
    ModelManifest,
    ModelRegistry,
    RegistryError,
    expected_signature,
    new_version,
    sha256_file,
)

MAX_SEQ_LEN, TOP_K = 4, 2
VOCABULARY = ["a", "b", "c"]


def _contract_onnx(
    path: Path,
    history_width: str | int = HISTORY_DIM,
    top_k: int = TOP_K,
    max_history: int | None = MAX_SEQ_LEN,
) -> None:
    """A tiny graph with the contract's signature: score = -item index (not a real model).
    ``history_width`` an int gives the fixed-width form of versions exported before 2026-12."""
    history = helper.make_tensor_value_info(ONNX_INPUT_HISTORY, TensorProto.INT64, [BATCH_DIM, history_width])
    exclude = helper.make_tensor_value_info(ONNX_INPUT_EXCLUDE, TensorProto.INT64, [BATCH_DIM, EXCLUDE_DIM])
    scores = helper.make_tensor_value_info(ONNX_OUTPUT_SCORES, TensorProto.FLOAT, [BATCH_DIM, top_k])
    items = helper.make_tensor_value_info(ONNX_OUTPUT_ITEMS, TensorProto.INT64, [BATCH_DIM, top_k])
    nodes = [
        helper.make_node("Slice", [ONNX_INPUT_HISTORY, "zero", "k", "one"], ["first_k"]),
        helper.make_node("Cast", ["first_k"], [ONNX_OUTPUT_SCORES], to=TensorProto.FLOAT),
        helper.make_node("Identity", ["first_k"], [ONNX_OUTPUT_ITEMS]),
    ]
    initializers = [
        helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
        helper.make_tensor("k", TensorProto.INT64, [1], [top_k]),
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
    ]
    graph = helper.make_graph(nodes, "contract", [history, exclude], [scores, items], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    if max_history is not None:
        helper.set_model_props(model, {MAX_HISTORY_PROPERTY: str(max_history)})
    onnx.save(model, str(path))


def _stage(
    registry: ModelRegistry,
    parent: str | None = None,
    history_width: str | int = HISTORY_DIM,
    **overrides: object,
) -> tuple[Path, ModelManifest]:
    staging = registry.new_staging_dir()
    _contract_onnx(
        staging / MODEL_FILE, history_width, max_history=MAX_SEQ_LEN if history_width == HISTORY_DIM else None
    )
    (staging / VOCAB_FILE).write_bytes(orjson.dumps(VOCABULARY))
    fields: dict[str, object] = {
        "version": new_version(),
        "created_at": time.time(),
        "model_type": "mf",
        "parent_version": parent,
        "n_items": len(VOCABULARY),
        "max_seq_len": MAX_SEQ_LEN,
        "top_k": TOP_K,
        "opset": 20,
        "files": {name: sha256_file(staging / name) for name in (MODEL_FILE, VOCAB_FILE)},
        "signature": expected_signature(MAX_SEQ_LEN, TOP_K, history_width),
        "metrics": {"val_ndcg@10": 0.1},
        "data": {"events": 10},
    }
    fields.update(overrides)
    return staging, ModelManifest(**fields)  # type: ignore[arg-type]


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


def test_empty_registry(registry: ModelRegistry) -> None:
    assert registry.versions() == []
    assert registry.promoted_version() is None and registry.newest_version() is None


def test_publish_moves_staging_into_place_as_a_candidate(registry: ModelRegistry) -> None:
    staging, manifest = _stage(registry)
    path = registry.publish(staging, manifest)

    assert path == registry.path(manifest.version)
    assert not staging.exists()
    assert registry.versions() == [manifest.version] and registry.newest_version() == manifest.version
    assert registry.promoted_version() is None  # published is not served
    assert registry.verify(manifest.version) == manifest
    assert registry.manifest(manifest.version).status == CANDIDATE
    assert registry.vocabulary(manifest.version) == VOCABULARY
    # Nothing but the version is left behind (no staging or temporary files).
    assert [p.name for p in registry.root.iterdir()] == [manifest.version]


def test_versions_sorted_oldest_first(registry: ModelRegistry) -> None:
    published = _publish(registry, 3)
    assert registry.versions() == published
    assert registry.newest_version() == published[-1]
    assert registry.manifest(published[-1]).parent_version == published[-2]


def test_promote_serves_a_version_and_reject_records_why(registry: ModelRegistry) -> None:
    first, second = _publish(registry, 2)
    registry.promote(first, "beats popularity")
    registry.reject(second, "worse than the promoted model")
    assert registry.promoted_version() == first
    assert (registry.manifest(first).status, registry.manifest(first).status_reason) == (
        PROMOTED,
        "beats popularity",
    )
    assert registry.manifest(second).status == REJECTED
    # Status changes leave the model files intact and verifiable.
    assert registry.verify(second).status_reason == "worse than the promoted model"
    assert (registry.root / PROMOTED_FILE).read_text().strip() == first
    assert [entry["version"] for entry in registry.promotions()] == [first]


def test_rollback_returns_to_the_previous_promoted_version(registry: ModelRegistry) -> None:
    first, rejected, second, third = _publish(registry, 4)
    for version in (first, second, third):
        registry.promote(version, "gate passed")
    registry.reject(rejected, "gate failed")
    assert registry.rollback("bad clicks") == (third, registry.manifest(second))
    assert registry.promoted_version() == second and registry.manifest(third).status == ROLLED_BACK
    registry.rollback("still bad")
    assert registry.promoted_version() == first  # never the rejected one
    with pytest.raises(RegistryError, match="only promoted version"):
        registry.rollback("again")
    assert registry.promoted_version() == first


def test_rollback_refuses_a_target_that_no_longer_verifies(registry: ModelRegistry) -> None:
    first, second = _publish(registry, 2)
    registry.promote(first, "ok")
    registry.promote(second, "ok")
    (registry.path(first) / MODEL_FILE).write_bytes(b"tampered")
    with pytest.raises(ModelIntegrityError, match="corrupt"):
        registry.rollback("try")
    assert registry.promoted_version() == second and registry.manifest(second).status == PROMOTED


def test_prune_keeps_the_newest_the_promoted_and_the_rollback_target(registry: ModelRegistry) -> None:
    versions = _publish(registry, 6)
    registry.promote(versions[0], "ok")
    registry.promote(versions[1], "ok")
    deleted = registry.prune(keep=2)
    assert deleted == versions[2:4]
    assert registry.versions() == [versions[0], versions[1], versions[4], versions[5]]
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".")]
    assert registry.prune(keep=2) == []


def test_a_torn_promotion_log_line_is_ignored(registry: ModelRegistry) -> None:
    first, second = _publish(registry, 2)
    registry.promote(first, "ok")
    registry.promote(second, "ok")
    with open(registry.root / PROMOTIONS_FILE, "ab") as log_file:
        log_file.write(b'{"action": "promote", "vers')  # a crash mid-append
    assert registry.rollback_target() == first


def _publish(registry: ModelRegistry, count: int) -> list[str]:
    published: list[str] = []
    for _ in range(count):
        staging, manifest = _stage(registry, parent=published[-1] if published else None)
        registry.publish(staging, manifest)
        published.append(manifest.version)
        time.sleep(0.002)  # versions have millisecond resolution
    return published


def test_new_version_is_sortable_and_unique() -> None:
    first = new_version()
    time.sleep(0.002)
    second = new_version()
    assert first < second
    assert len({new_version() for _ in range(100)}) == 100


def test_manifest_json_roundtrip() -> None:
    manifest = ModelManifest(
        version="v1",
        created_at=1.5,
        model_type="mf",
        parent_version=None,
        n_items=3,
        max_seq_len=4,
        top_k=2,
        opset=20,
        files={MODEL_FILE: "ab"},
        signature=expected_signature(4, 2),
        metrics={"val_hr@10": 0.5},
        data={"window_start": 0.0},
    )
    assert ModelManifest.from_json(manifest.to_json()) == manifest
    with pytest.raises(ModelIntegrityError, match="misses field"):
        ModelManifest.from_json(b'{"version": "v1"}')
    with pytest.raises(ModelIntegrityError, match="not valid JSON"):
        ModelManifest.from_json(b"{")


def test_unfinished_staging_dir_is_invisible(registry: ModelRegistry) -> None:
    """A crash before publish leaves only a .staging-* directory, which readers ignore."""
    staging, manifest = _stage(registry)
    (staging / MANIFEST_FILE).write_bytes(manifest.to_json())  # even with a manifest inside
    assert registry.versions() == []


def test_crash_while_promoting_keeps_the_old_pointer(registry: ModelRegistry, monkeypatch) -> None:
    first, second = _publish(registry, 2)
    registry.promote(first, "ok")

    def crash(*args: object) -> None:
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        registry.promote(second, "ok")
    monkeypatch.undo()
    # PROMOTED still names the old version and nothing half-written is left.
    assert registry.promoted_version() == first
    assert registry.verify(second).status == CANDIDATE
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".")]


def test_publish_refuses_files_that_do_not_match_the_manifest(registry: ModelRegistry) -> None:
    staging, manifest = _stage(registry)
    (staging / VOCAB_FILE).write_bytes(orjson.dumps([*VOCABULARY, "d"]))
    with pytest.raises(ModelIntegrityError, match=f"{VOCAB_FILE} is corrupt"):
        registry.publish(staging, manifest)
    assert registry.versions() == []


def test_publish_refuses_an_existing_version(registry: ModelRegistry) -> None:
    staging, manifest = _stage(registry)
    registry.publish(staging, manifest)
    staging, _ = _stage(registry)
    with pytest.raises(FileExistsError):
        registry.publish(staging, manifest)


def test_verify_detects_a_changed_byte(registry: ModelRegistry) -> None:
    staging, manifest = _stage(registry)
    path = registry.publish(staging, manifest)
    raw = bytearray((path / MODEL_FILE).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (path / MODEL_FILE).write_bytes(bytes(raw))
    with pytest.raises(ModelIntegrityError, match=f"{manifest.version}: {MODEL_FILE} is corrupt"):
        registry.verify(manifest.version)


def test_verify_detects_a_missing_file(registry: ModelRegistry) -> None:
    staging, manifest = _stage(registry)
    path = registry.publish(staging, manifest)
    (path / VOCAB_FILE).unlink()
    with pytest.raises(ModelIntegrityError, match=f"file {VOCAB_FILE} is missing"):
        registry.verify(manifest.version)
    (path / MANIFEST_FILE).unlink()
    with pytest.raises(ModelIntegrityError, match=f"no {MANIFEST_FILE}"):
        registry.verify(manifest.version)


def test_verify_rejects_a_signature_that_breaks_the_contract(registry: ModelRegistry) -> None:
    # The manifest claims the contract, but the graph reads histories of one fixed length.
    staging, manifest = _stage(registry)
    _contract_onnx(staging / MODEL_FILE, history_width=MAX_SEQ_LEN)
    files = {**manifest.files, MODEL_FILE: sha256_file(staging / MODEL_FILE)}
    with pytest.raises(ModelIntegrityError, match="the manifest says"):
        registry.publish(staging, ModelManifest(**{**manifest.__dict__, "files": files}))

    staging, manifest = _stage(registry, signature={"inputs": {}, "outputs": {}})
    with pytest.raises(ModelIntegrityError, match="does not match the model contract"):
        registry.publish(staging, manifest)

    # A fixed width other than max_seq_len is no form of the contract.
    staging, manifest = _stage(registry, history_width=MAX_SEQ_LEN + 1)
    with pytest.raises(ModelIntegrityError, match="does not match the model contract"):
        registry.publish(staging, manifest)


def test_a_dynamic_width_graph_must_declare_the_manifests_max_seq_len(registry: ModelRegistry) -> None:
    # The interface of a graph of dynamic width does not say how long a history it reads.
    for declared, expected in ((MAX_SEQ_LEN + 1, f"reads at most {MAX_SEQ_LEN + 1}"), (None, "undeclared")):
        staging, manifest = _stage(registry)
        _contract_onnx(staging / MODEL_FILE, max_history=declared)
        files = {**manifest.files, MODEL_FILE: sha256_file(staging / MODEL_FILE)}
        with pytest.raises(ModelIntegrityError, match=expected):
            registry.publish(staging, ModelManifest(**{**manifest.__dict__, "files": files}))


def test_a_version_exported_with_a_fixed_history_width_still_verifies(registry: ModelRegistry) -> None:
    # Versions exported before the history width became dynamic read exactly max_seq_len items.
    staging, manifest = _stage(registry, history_width=MAX_SEQ_LEN)
    registry.publish(staging, manifest)
    assert registry.verify(manifest.version).signature["inputs"][ONNX_INPUT_HISTORY]["shape"] == [
        BATCH_DIM,
        MAX_SEQ_LEN,
    ]


def test_path_rejects_names_that_escape_the_root(registry: ModelRegistry) -> None:
    for bad in ("../x", ".staging-1", "a/b", ""):
        with pytest.raises(ModelIntegrityError, match="invalid model version"):
            registry.path(bad)
