"""ONNX export: onnxruntime ranks exactly like torch, honours exclusions; the full training cycle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from streamrec.shared.model_contract import (
    ITEM_POPULARITY_FILE,
    MODEL_FILE,
    ONNX_INPUT_EXCLUDE,
    ONNX_INPUT_HISTORY,
    ONNX_OUTPUT_ITEMS,
    ONNX_OUTPUT_SCORES,
    PADDING_INDEX,
)
from streamrec.shared.registry import PROMOTED, ModelRegistry, expected_signature
from streamrec.shared.settings import Settings
from streamrec.trainer.cycle import publish_candidate, run_training_cycle
from streamrec.trainer.dataset import build_dataset
from streamrec.trainer.export import ExportedModel, ParityError, check_parity, export_model
from streamrec.trainer.gate import judge
from streamrec.trainer.model import MeanEmbeddingMF

N_ITEMS, MAX_SEQ_LEN, TOP_K = 30, 6, 10


def random_inputs(batch: int, n_exclude: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded histories of random lengths (some empty) and 0-padded exclusion lists."""
    rng = np.random.default_rng(seed)
    history = rng.integers(1, N_ITEMS + 1, size=(batch, MAX_SEQ_LEN))
    lengths = rng.integers(0, MAX_SEQ_LEN + 1, size=batch)
    history[np.arange(MAX_SEQ_LEN)[None, :] < (MAX_SEQ_LEN - lengths)[:, None]] = PADDING_INDEX
    exclude = rng.integers(0, N_ITEMS + 1, size=(batch, n_exclude))
    return history.astype(np.int64), exclude.astype(np.int64)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[MeanEmbeddingMF, Path, ExportedModel]:
    torch.manual_seed(0)
    model = MeanEmbeddingMF(N_ITEMS, MAX_SEQ_LEN, TOP_K, dim=8)
    with torch.no_grad():  # spread scores out like a trained model (the init is deliberately tiny)
        model.item_emb.weight[1:].normal_()
        model.item_bias.normal_()  # type: ignore[union-attr]
    model.eval()
    out_dir = tmp_path_factory.mktemp("export")
    histories, exclude = random_inputs(32, 4, seed=1)
    result = export_model(model, [f"item-{i}" for i in range(1, N_ITEMS + 1)], out_dir, histories, exclude)
    return model, out_dir / MODEL_FILE, result


def run_onnx(path: Path, history: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores, items = session.run(
        [ONNX_OUTPUT_SCORES, ONNX_OUTPUT_ITEMS], {ONNX_INPUT_HISTORY: history, ONNX_INPUT_EXCLUDE: exclude}
    )
    return scores, items


def test_signature_follows_the_contract(exported: tuple[MeanEmbeddingMF, Path, ExportedModel]) -> None:
    _, _, result = exported
    assert result.signature == expected_signature(MAX_SEQ_LEN, TOP_K)
    assert result.opset >= 17
    assert set(result.files) == {"model.onnx", "items.json", "item_embeddings.npy"}


def test_item_embeddings_are_the_scored_item_vectors(
    exported: tuple[MeanEmbeddingMF, Path, ExportedModel],
) -> None:
    model, path, _ = exported
    embeddings = np.load(path.parent / "item_embeddings.npy")
    assert embeddings.dtype == np.float32 and embeddings.shape == (N_ITEMS, 8)
    # Row i - 1 is item index i: the table the logits are computed with, padding row left out.
    np.testing.assert_array_equal(embeddings, model.item_emb.weight[1:].detach().numpy())


@pytest.mark.parametrize(("batch", "n_exclude"), [(1, 1), (17, 5), (17, 0), (3, 40)])
def test_onnxruntime_matches_torch(
    exported: tuple[MeanEmbeddingMF, Path, ExportedModel], batch: int, n_exclude: int
) -> None:
    model, path, _ = exported
    history, exclude = random_inputs(batch, n_exclude, seed=batch + n_exclude)
    scores, items = run_onnx(path, history, exclude)
    with torch.no_grad():
        torch_scores, torch_items = model(torch.from_numpy(history), torch.from_numpy(exclude))
    assert scores.shape == items.shape == (batch, TOP_K)
    assert scores.dtype == np.float32 and items.dtype == np.int64
    np.testing.assert_allclose(scores, torch_scores.numpy(), atol=1e-4, rtol=1e-4)
    # With 40 exclusions of 30 items fewer than k remain: the -inf tail may come in any order.
    allowed = np.isfinite(scores)
    np.testing.assert_array_equal(items[allowed], torch_items.numpy()[allowed])
    assert (n_exclude < 40) == bool(allowed.all())
    check_parity(model, path, history, exclude)  # the exporter's own check agrees


def test_excluded_and_padding_items_never_returned(
    exported: tuple[MeanEmbeddingMF, Path, ExportedModel],
) -> None:
    _, path, _ = exported
    history, exclude = random_inputs(64, 8, seed=7)
    scores, items = run_onnx(path, history, exclude)
    for row in range(len(items)):
        assert PADDING_INDEX not in items[row]
        assert not set(items[row]) & set(exclude[row].tolist())
        assert len(set(items[row])) == TOP_K
        assert np.all(np.diff(scores[row]) <= 0)  # best first
    # Excluding the otherwise best items makes the next best ones come up instead.
    top = items[:, :3]
    _, items_without_top = run_onnx(path, history, np.concatenate([exclude, top], axis=1))
    np.testing.assert_array_equal(items_without_top[:, : TOP_K - 3], items[:, 3:])


def test_parity_check_catches_a_diverging_model(
    exported: tuple[MeanEmbeddingMF, Path, ExportedModel],
) -> None:
    model, path, _ = exported
    history, exclude = random_inputs(8, 2, seed=3)
    other = MeanEmbeddingMF(N_ITEMS, MAX_SEQ_LEN, TOP_K, dim=8)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.item_bias += torch.linspace(0, 5, N_ITEMS + 1)  # type: ignore[operator]
    with pytest.raises(ParityError, match="differ"):
        check_parity(other.eval(), path, history, exclude)


def chain_events(users: int = 40, items: int = 20) -> pd.DataFrame:
    rows = [
        (f"u{user}", f"i{(user + step) % items}", "view", float(step), 1.0)
        for user in range(users)
        for step in range(5)
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp", "value"])


def test_training_cycle_publishes_gates_and_promotes(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, epochs=2, embedding_dim=8, max_seq_len=5, top_n=50)
    registry = ModelRegistry(settings.model_dir)  # type: ignore[arg-type]

    first = run_training_cycle(chain_events(), settings, {"window_end": 123.0})
    manifest = first.manifest
    assert first.promoted and first.decision.baseline_name == "popularity"
    assert first.decision.candidate > first.decision.baseline  # type: ignore[operator]
    assert registry.promoted_version() == manifest.version
    assert registry.verify(manifest.version) == manifest and manifest.status == PROMOTED
    assert manifest.parent_version is None
    assert manifest.top_k == 20  # min(top_n, n_items)
    assert manifest.data["events"] == 200 and manifest.data["window_end"] == 123.0
    assert "val_ndcg@10" in manifest.metrics
    # The run is recorded: loss curve per epoch, and the gate's numbers.
    assert [point["epoch"] for point in manifest.curve] == list(
        range(1, int(manifest.metrics["epochs_run"]) + 1)
    )
    assert manifest.metrics["holdout_ndcg@10"] == first.decision.candidate
    assert manifest.metrics["holdout_ndcg@10_baseline"] == first.decision.baseline
    assert len(registry.vocabulary(manifest.version)) == manifest.n_items == 20

    # Same data and seed: an equally good model, so it passes the gate against the first.
    second = run_training_cycle(chain_events(), settings, {})
    assert second.promoted and second.decision.baseline_name == f"promoted {manifest.version}"
    assert second.manifest.parent_version == manifest.version
    assert registry.versions() == [manifest.version, second.manifest.version]
    assert registry.promoted_version() == second.manifest.version


def test_a_version_carries_its_training_interactions_per_item(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, epochs=1, embedding_dim=8, max_seq_len=5, top_n=50)
    # Ten more users take i3 then i4: those two items are twice as popular as the others.
    extra = pd.DataFrame(
        [
            (f"fan{user}", item, "view", float(step), 1.0)
            for user in range(10)
            for step, item in enumerate(["i3", "i4"])
        ],
        columns=["user_id", "item_id", "event_type", "timestamp", "value"],
    )
    events = pd.concat([chain_events(), extra], ignore_index=True)
    manifest, _ = publish_candidate(events, settings, {})
    registry = ModelRegistry(settings.model_dir)  # type: ignore[arg-type]
    assert ITEM_POPULARITY_FILE in manifest.files  # hashed and verified like the other files
    popularity = np.load(registry.path(manifest.version) / ITEM_POPULARITY_FILE)
    counts = events["item_id"].value_counts()
    assert popularity.tolist() == [counts[item] for item in registry.vocabulary(manifest.version)]
    assert sorted(set(popularity.tolist())) == [10, 20]


def test_export_refuses_a_popularity_of_the_wrong_size(tmp_path: Path) -> None:
    model = MeanEmbeddingMF(N_ITEMS, MAX_SEQ_LEN, TOP_K, dim=8).eval()
    histories, exclude = random_inputs(4, 2, seed=3)
    vocabulary = [f"item-{i}" for i in range(1, N_ITEMS + 1)]
    with pytest.raises(ValueError, match="popularity"):
        export_model(model, vocabulary, tmp_path, histories, exclude, np.zeros(N_ITEMS + 1, dtype=np.int64))


def test_the_gate_rejects_a_model_trained_on_shuffled_items(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, epochs=3, embedding_dim=8, max_seq_len=5, top_n=50)
    registry = ModelRegistry(settings.model_dir)  # type: ignore[arg-type]
    events = chain_events()
    good = run_training_cycle(events, settings, {}).manifest

    # Same events with the items shuffled between them: the sequences say nothing any more.
    shuffled = events.assign(item_id=events.item_id.sample(frac=1.0, random_state=0).to_numpy())
    bad, _ = publish_candidate(shuffled, settings, {})
    decision = judge(registry, bad.version, build_dataset(events, settings.max_seq_len), settings)
    assert not decision.promote and "worse than" in decision.reason
    assert decision.candidate < decision.baseline - settings.gate_tolerance  # type: ignore[operator]
    assert registry.promoted_version() == good.version


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        (pd.DataFrame({"user_id": ["a", "a"], "item_id": ["x", "x"], "timestamp": [1.0, 2.0]}), "1 distinct"),
        (
            pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "timestamp": [1.0, 2.0]}),
            "two or more",
        ),
        (pd.DataFrame({"user_id": [], "item_id": [], "timestamp": []}), "0 distinct"),
    ],
)
def test_training_cycle_refuses_too_little_data(tmp_path: Path, events: pd.DataFrame, reason: str) -> None:
    settings = Settings(data_dir=tmp_path, epochs=1)
    with pytest.raises(ValueError, match=reason):
        run_training_cycle(events, settings, {})
    assert ModelRegistry(settings.model_dir).versions() == []  # type: ignore[arg-type]
