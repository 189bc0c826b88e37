"""Training cost of the default model on ml-latest-small: seconds per epoch, total, ONNX export.

Trains the way the trainer does (default settings: early stopping on each user's last item),
exports with the parity check, and, as the same-run baseline, times the previous default model
(mf) per epoch on the same data. Quick mode trains two epochs on a small synthetic set.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

from bench.harness import RUNS, Figure, Section, timed
from streamrec.shared.datasets import load_interactions
from streamrec.shared.settings import Settings
from streamrec.synthetic import generate
from streamrec.trainer.cycle import _parity_sample
from streamrec.trainer.dataset import build_dataset
from streamrec.trainer.export import export_model
from streamrec.trainer.train import train

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-latest-small" / "ratings.csv"
BASELINE_EPOCHS = 2


def run(quick: bool) -> list[Section]:
    """The training section."""
    events = generate(users=200, items=150, seed=1) if quick else load_interactions(DATASET)
    runs = 1 if quick else RUNS
    settings = Settings(epochs=2) if quick else Settings()
    dataset = build_dataset(events, settings.max_seq_len)
    totals, per_epoch, exports, epochs, baseline = [], [], [], [], []
    for _ in range(runs):
        result = train(dataset, settings)
        totals.append(result.train_seconds)
        per_epoch.append(sum(stats.seconds for stats in result.history) / len(result.history))
        epochs.append(len(result.history))
        histories, exclude = _parity_sample(dataset, settings)
        with tempfile.TemporaryDirectory() as out:
            exports.append(
                timed(partial(export_model, result.model, result.vocabulary, Path(out), histories, exclude))
            )
        mf = train(
            dataset, settings.for_model("mf").model_copy(update={"epochs": BASELINE_EPOCHS, "patience": 99})
        )
        baseline.append(sum(stats.seconds for stats in mf.history) / len(mf.history))
    name = "synthetic (quick)" if quick else "ml-latest-small"
    return [
        Section(
            "Training (figure 5)",
            "python -m bench --only training" + (" --quick" if quick else ""),
            [
                Figure(
                    f"sasrec seconds per epoch, {name}",
                    "s",
                    per_epoch,
                    "mf seconds per epoch",
                    baseline,
                ),
                Figure(
                    f"sasrec training total, {name}",
                    "s",
                    totals,
                    target="≤ 300 s",
                    note=f"{min(epochs)}–{max(epochs)} epochs with early stopping",
                ),
                Figure("ONNX export + parity check", "s", exports),
            ],
            description=(
                f"Default settings ({settings.model}: lr {settings.learning_rate}, batch {settings.batch_size} "
                f"windows, dropout {settings.dropout}, ≤ {settings.windows_per_user} windows per user and epoch, "
                f"weight average {settings.weight_average_decay}, patience {settings.patience}), torch threads: {settings.train_threads or 'one per core'}, "
                f"{len(events):,} events. Validation is each user's last item (the trainer's own split)."
            ),
        )
    ]
