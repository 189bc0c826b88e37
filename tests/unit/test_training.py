"""Dataset building and the training loop: learns real structure, deterministic per seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from streamrec.shared.settings import Settings
from streamrec.trainer.dataset import build_dataset
from streamrec.trainer.train import popularity_baseline, train


def clustered_events(users: int = 160, items: int = 40, clusters: int = 4, length: int = 8) -> pd.DataFrame:
    """Each user walks along the item chain of one cluster: learnable, while popularity is ~flat."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(users):
        chain = np.arange(user % clusters, items, clusters)
        start = int(rng.integers(len(chain)))
        for step in range(length):
            item = int(chain[(start + step) % len(chain)])
            rows.append((f"u{user}", f"i{item}", "view", 1000.0 * user + step, None))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp", "value"])


def tiny_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path,
        "embedding_dim": 16,
        "max_seq_len": 8,
        "epochs": 12,
        "patience": 3,
        "batch_size": 64,
        "learning_rate": 0.02,
        "top_n": 10,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def test_dataset_orders_by_time_then_row_and_splits_last_item() -> None:
    events = pd.DataFrame(
        {
            "user_id": ["a", "b", "a", "a", "b", "a"],
            "item_id": ["x", "y", "z", "y", "x", "w"],
            "event_type": ["view"] * 6,
            "timestamp": [3.0, 1.0, 1.0, 1.0, 2.0, 5.0],  # a: z and y tie at t=1 -> row order
            "value": [None] * 6,
        }
    )
    data = build_dataset(events, max_seq_len=3)
    # Popularity first (x, y: 2 each; ties by first appearance), then z, w.
    assert data.vocabulary == ["x", "y", "z", "w"]
    index = {item: i for i, item in enumerate(data.vocabulary, start=1)}
    a_items = data.items[data.user_starts[0] : data.user_starts[1]]
    assert a_items.tolist() == [index["z"], index["y"], index["x"], index["w"]]
    # Only "a" has >= 3 events: its last item is the validation target; "b" trains on everything.
    assert data.val_users.tolist() == [0]
    assert data.val_targets().tolist() == [index["w"]]
    assert data.val_histories().tolist() == [[index["z"], index["y"], index["x"]]]
    histories, targets = data.train_batch(np.arange(data.n_train_examples))
    assert targets.tolist() == [index["y"], index["x"], index["x"]]  # a: y, x (w held out); b: x
    assert histories.tolist() == [[0, 0, index["z"]], [0, index["z"], index["y"]], [0, 0, index["y"]]]
    rows, seen = data.val_seen(data.val_users)
    assert rows.tolist() == [0, 0, 0] and seen.tolist() == [index["z"], index["y"], index["x"]]


def test_model_beats_popularity(tmp_path: Path) -> None:
    data = build_dataset(clustered_events(), max_seq_len=8)
    result = train(data, tiny_settings(tmp_path))
    pop_ndcg, _ = popularity_baseline(data)
    assert result.metrics["val_ndcg@10"] > pop_ndcg + 0.2
    assert result.metrics["val_hr@10"] > 0.8
    assert result.metrics["popularity_ndcg@10"] == pytest.approx(pop_ndcg)
    assert 1 <= result.best_epoch <= len(result.history)
    assert result.metrics["val_ndcg@10"] == max(e.val_ndcg for e in result.history)  # type: ignore[type-var]
    assert not result.model.training


def test_same_seed_gives_identical_runs(tmp_path: Path) -> None:
    data = build_dataset(clustered_events(users=60), max_seq_len=8)
    settings = tiny_settings(tmp_path, epochs=3)
    first, second = train(data, settings), train(data, settings)
    assert [(e.loss, e.val_ndcg, e.val_hr) for e in first.history] == [
        (e.loss, e.val_ndcg, e.val_hr) for e in second.history
    ]
    for key, value in first.model.state_dict().items():
        assert np.array_equal(value.numpy(), second.model.state_dict()[key].numpy())


def test_early_stopping_keeps_best_epoch(tmp_path: Path) -> None:
    # A huge learning rate makes validation worse after the first epochs: training must stop
    # `patience` epochs after the best one and keep that epoch's metrics.
    data = build_dataset(clustered_events(users=60), max_seq_len=8)
    result = train(data, tiny_settings(tmp_path, epochs=30, patience=2, learning_rate=1.0))
    assert len(result.history) == result.best_epoch + 2 < 30
    assert result.metrics["best_epoch"] == result.best_epoch
    assert result.metrics["val_ndcg@10"] == result.history[result.best_epoch - 1].val_ndcg


@pytest.mark.parametrize(
    ("higher_is_better", "scores", "stops_at", "best"),
    [
        (True, [0.1, 0.3, 0.2, 0.25, 0.9], 4, 2),  # NDCG: two epochs below 0.3 stop at epoch 4
        (False, [0.9, 0.8, 0.85, 0.7, 0.75, 0.8], 6, 4),  # RMSE: lower is better
        (True, [0.1, 0.1, 0.1], 3, 1),  # a tie is no gain
        (True, [None, None, None], None, 3),  # no validation: every epoch is the best
    ],
)
def test_early_stopping_keeps_the_best_epochs_weights(
    higher_is_better: bool, scores: list[float | None], stops_at: int | None, best: int
) -> None:
    from torch import nn

    from streamrec.trainer.train import EarlyStopping

    model = nn.Linear(1, 1, bias=False)
    stopping = EarlyStopping(patience=2, higher_is_better=higher_is_better)
    stopped = None
    for epoch, score in enumerate(scores, start=1):
        with torch.no_grad():
            model.weight.fill_(float(epoch))  # the weights say which epoch they are from
        if stopping.should_stop(epoch, score, model):
            stopped = epoch
            break
    assert (stopped, stopping.best_epoch) == (stops_at, best)
    stopping.restore(model)
    assert model.weight.detach().item() == best and not model.training


def test_training_without_validation_users(tmp_path: Path) -> None:
    data = build_dataset(clustered_events(users=20, length=2), max_seq_len=8)
    assert len(data.val_users) == 0
    result = train(data, tiny_settings(tmp_path, epochs=2))
    assert result.best_epoch == 2
    assert "val_ndcg@10" not in result.metrics


def test_weight_average_is_the_exponential_moving_average_of_the_steps() -> None:
    from torch import nn

    from streamrec.trainer.model import MeanEmbeddingMF
    from streamrec.trainer.train import WeightAverage

    model = MeanEmbeddingMF(n_items=3, max_seq_len=2, top_k=2, dim=2)
    assert WeightAverage(model, 0.0).model() is model  # off: the raw weights are kept
    average = WeightAverage(model, 0.5)
    for value in (1.0, 3.0, 5.0):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(value)
        average.update()
    # The first update copies the weights; each later one moves halfway: 1 -> 2 -> 3.5.
    averaged = average.model()
    assert averaged is not model
    assert isinstance(averaged, nn.Module)
    assert torch.allclose(averaged.item_emb.weight, torch.full_like(model.item_emb.weight, 3.5))
    assert torch.allclose(model.item_emb.weight, torch.full_like(model.item_emb.weight, 5.0))


def test_training_with_a_weight_average_still_learns(tmp_path: Path) -> None:
    data = build_dataset(clustered_events(), max_seq_len=8)
    result = train(data, tiny_settings(tmp_path, model="sasrec", weight_average_decay=0.9, epochs=6))
    assert result.metrics["val_ndcg@10"] > popularity_baseline(data)[0] + 0.1
