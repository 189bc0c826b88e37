"""SASRec: exports to ONNX with parity, never returns excluded items, ignores padding, is reproducible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_training import clustered_events, tiny_settings

from streamrec.shared.model_contract import (
    MODEL_FILE,
    ONNX_INPUT_EXCLUDE,
    ONNX_INPUT_HISTORY,
    ONNX_OUTPUT_ITEMS,
    ONNX_OUTPUT_SCORES,
    PADDING_INDEX,
)
from streamrec.shared.registry import expected_signature
from streamrec.trainer.dataset import build_dataset
from streamrec.trainer.export import check_parity, export_model
from streamrec.trainer.model import SASRec, build_model
from streamrec.trainer.train import TrainBatches, popularity_baseline, train

N_ITEMS, MAX_SEQ_LEN, TOP_K = 30, 6, 10


def tiny_sasrec(seed: int = 0) -> SASRec:
    """A small SASRec with weights spread out like a trained model's (the init is deliberately tiny)."""
    torch.manual_seed(seed)
    model = SASRec(N_ITEMS, MAX_SEQ_LEN, TOP_K, dim=8, n_blocks=2, n_heads=2, dropout=0.3)
    with torch.no_grad():
        model.item_emb.weight[1:].normal_()
        model.pos_emb.normal_()
        model.item_bias.normal_()
    return model.eval()


def random_inputs(batch: int, n_exclude: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded histories of random lengths (some empty) and 0-padded exclusion lists."""
    rng = np.random.default_rng(seed)
    history = rng.integers(1, N_ITEMS + 1, size=(batch, MAX_SEQ_LEN))
    lengths = rng.integers(0, MAX_SEQ_LEN + 1, size=batch)
    history[np.arange(MAX_SEQ_LEN)[None, :] < (MAX_SEQ_LEN - lengths)[:, None]] = PADDING_INDEX
    exclude = rng.integers(0, N_ITEMS + 1, size=(batch, n_exclude))
    return history.astype(np.int64), exclude.astype(np.int64)


def run_onnx(path: Path, history: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores, items = session.run(
        [ONNX_OUTPUT_SCORES, ONNX_OUTPUT_ITEMS], {ONNX_INPUT_HISTORY: history, ONNX_INPUT_EXCLUDE: exclude}
    )
    return scores, items


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[SASRec, Path]:
    model = tiny_sasrec()
    out_dir = tmp_path_factory.mktemp("sasrec")
    histories, exclude = random_inputs(32, 4, seed=1)
    result = export_model(model, [f"item-{i}" for i in range(1, N_ITEMS + 1)], out_dir, histories, exclude)
    assert result.signature == expected_signature(MAX_SEQ_LEN, TOP_K)
    return model, out_dir / MODEL_FILE


@pytest.mark.parametrize(("batch", "n_exclude"), [(1, 1), (17, 5), (17, 0), (3, 12)])
def test_onnxruntime_matches_torch(exported: tuple[SASRec, Path], batch: int, n_exclude: int) -> None:
    model, path = exported
    history, exclude = random_inputs(batch, n_exclude, seed=batch + n_exclude)
    scores, items = run_onnx(path, history, exclude)
    with torch.no_grad():
        torch_scores, torch_items = model(torch.from_numpy(history), torch.from_numpy(exclude))
    assert scores.shape == items.shape == (batch, TOP_K)
    np.testing.assert_allclose(scores, torch_scores.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(items, torch_items.numpy())
    check_parity(model, path, history, exclude)


def test_excluded_and_padding_items_never_returned(exported: tuple[SASRec, Path]) -> None:
    _, path = exported
    history, exclude = random_inputs(64, 8, seed=7)
    _, items = run_onnx(path, history, exclude)
    for row in range(len(items)):
        assert PADDING_INDEX not in items[row]
        assert not set(items[row]) & set(exclude[row].tolist())
        assert len(set(items[row])) == TOP_K


def test_padding_is_ignored() -> None:
    model = tiny_sasrec()
    short = torch.tensor([[5, 9, 2]])
    padded = torch.tensor([[0, 0, 0, 5, 9, 2]])
    with torch.no_grad():
        # The same history cut to its items, or left-padded to max_seq_len, scores the same.
        np.testing.assert_allclose(model.logits(short), model.logits(padded), atol=1e-5)
        # A short history scores the same alone as in a batch with full ones.
        batch = torch.cat([torch.tensor([[3, 4, 5, 6, 7, 8]]), padded, torch.tensor([[1, 1, 2, 2, 3, 3]])])
        np.testing.assert_allclose(model.logits(batch)[1:2], model.logits(padded), atol=1e-5)
        # The training pass scores the window's last position exactly as serving does.
        last = torch.zeros_like(padded, dtype=torch.bool)
        last[:, -1] = True
        np.testing.assert_allclose(model.prefix_logits(padded, last), model.logits(padded)[:, 1:], atol=1e-5)
        # An empty history still gives finite scores (no NaN from an all-padding attention row).
        assert torch.isfinite(model.logits(torch.zeros((1, MAX_SEQ_LEN), dtype=torch.int64))).all()


def test_windows_cover_every_training_target_once(tmp_path: Path) -> None:
    data = build_dataset(clustered_events(users=7, length=9), max_seq_len=3)
    batches = TrainBatches(data, batch_size=4, all_positions=True)
    pairs = []
    n_targets, epoch = batches.shuffled(np.random.default_rng(0))
    for inputs, targets in epoch:
        assert inputs.shape == targets.shape and inputs.shape[1] <= 3
        is_target = targets != PADDING_INDEX
        assert (inputs[is_target] != PADDING_INDEX).all()
        pairs += list(zip(inputs[is_target].tolist(), targets[is_target].tolist(), strict=True))
    histories, expected_targets = data.train_batch(np.arange(data.n_train_examples))
    assert n_targets == len(pairs) == data.n_train_examples
    assert sorted(pairs) == sorted(zip(histories[:, -1].tolist(), expected_targets.tolist(), strict=True))


def test_windows_per_user_caps_each_epoch_and_varies_between_epochs(tmp_path: Path) -> None:
    data = build_dataset(clustered_events(users=5, length=12), max_seq_len=3)  # 4 windows per user
    batches = TrainBatches(data, batch_size=64, all_positions=True, windows_per_user=2)
    rng = np.random.default_rng(0)
    epochs = []
    for _ in range(4):
        n_targets, epoch = batches.shuffled(rng)
        windows = [tuple(row) for targets in [t for _, t in epoch] for row in targets.tolist()]
        assert len(windows) == 5 * 2 and n_targets == sum(t != PADDING_INDEX for w in windows for t in w)
        epochs.append(set(windows))
    assert len(set.union(*epochs)) > len(epochs[0])  # other windows are drawn in other epochs


def test_training_learns_and_is_deterministic(tmp_path: Path) -> None:
    data = build_dataset(clustered_events(), max_seq_len=8)
    settings = tiny_settings(tmp_path, model="sasrec", learning_rate=0.01, epochs=6, dropout=0.1)
    first, second = train(data, settings), train(data, settings)
    assert isinstance(first.model, SASRec)
    assert first.metrics["val_ndcg@10"] > popularity_baseline(data)[0] + 0.2
    assert [e.loss for e in first.history] == [e.loss for e in second.history]
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name
    other = train(data, settings.model_copy(update={"seed": 7}))
    assert other.history[0].loss != first.history[0].loss


def test_built_from_settings(tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path, model="sasrec", n_blocks=3, n_heads=4, dropout=0.4)
    model = build_model(settings, n_items=12)
    assert isinstance(model, SASRec)
    assert len(model.blocks) == 3 and model.blocks[0].attn.n_heads == 4
    assert model.max_seq_len == settings.max_seq_len
