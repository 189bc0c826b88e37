"""Scoring throughput: users/s of the served model in onnxruntime vs the same model in torch eager.

The model is the default one (SASRec, default sizes) exported by the trainer's own export path,
run with 2 intra-op threads (``STREAMREC_SCORER_THREADS=2``, a scorer on cores of its own; the
default of 1 spends less CPU per user on shared cores), sequential execution. Inputs are full
histories (``max_seq_len`` items) and as many excluded items; one more row per catalogue times
histories of ``SHORT_HISTORY`` items, sent as wide as they are (the scorer's input is as wide as
a batch's longest history), against full ones. One more row per catalogue times the popularity
penalty (``STREAMREC_SCORER_POPULARITY_PENALTY``): the same calls followed by the scorer's re-rank
of the graph's candidates (shared/debias.py), against the calls alone. The same run also multiplies a
``[1024, dim] x [dim, n_items]`` matrix in torch: the GFLOP/s this machine reaches on the scoring
head alone, to put the model's GFLOP/s in context.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench.harness import RUNS, Figure, Section, image_path, repeat, timed
from bench.models import export_untrained_model
from bench.plots import throughput_bars
from streamrec.shared.debias import popularity_rerank, popularity_terms
from streamrec.shared.model_contract import (
    MODEL_FILE,
    ONNX_INPUT_EXCLUDE,
    ONNX_INPUT_HISTORY,
    ONNX_OUTPUT_ITEMS,
    ONNX_OUTPUT_SCORES,
)
from streamrec.shared.settings import Settings

SHORT_HISTORY = 10  # items: a new or occasional user
THREADS = 2  # onnxruntime intra-op threads, as STREAMREC_SCORER_THREADS=2 (services/scorer/model_runtime.py)
PENALTY = 0.5  # any positive penalty costs the same: the re-rank's work does not depend on it
PENALTY_BATCH = 64


def model_gflop_per_user(dim: int, length: int, blocks: int, n_items: int) -> float:
    """Multiply-adds x 2 of one user's forward pass: every position through every block but the
    last (projections 4d², feed-forward 8d², attention 2Ld), the last block's keys and values at
    every position (2d²) and the rest at the last one only, then that position against every item."""
    per_position = 2 * (4 * dim * dim + 8 * dim * dim) + 4 * length * dim
    last_block = length * 2 * (2 * dim * dim) + per_position
    return (length * (blocks - 1) * per_position + last_block + 2 * dim * n_items) / 1e9


def _users_per_second(call: Callable[[], object], calls: int, batch: int) -> float:
    return calls * batch / timed(lambda: [call() for _ in range(calls)])


def _paired_users_per_second(
    first: Callable[[], object], second: Callable[[], object], calls: int, batch: int
) -> tuple[list[float], list[float]]:
    """Users/s of two calls measured in alternation (after one warm-up each), so that a change of
    load on a shared machine hits both alike: (runs of ``first``, runs of ``second``)."""
    first()
    second()
    pairs = [
        (_users_per_second(first, calls, batch), _users_per_second(second, calls, batch)) for _ in range(RUNS)
    ]
    return [on for on, _ in pairs], [off for _, off in pairs]


def _feeds(history: np.ndarray) -> dict[str, np.ndarray]:
    """Model inputs for ``history``, which also serves as the items to exclude."""
    return {ONNX_INPUT_HISTORY: history, ONNX_INPUT_EXCLUDE: history}


def _gflops(call: Callable[[], object], gflop: float) -> float:
    return gflop / timed(call)


def _penalised_call(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], terms: np.ndarray, n: int
) -> object:
    """One inference and the scorer's popularity re-rank of its candidates, as ServedModel.rank does."""
    scores, items = session.run([ONNX_OUTPUT_SCORES, ONNX_OUTPUT_ITEMS], feeds)
    return popularity_rerank(scores, items, terms, PENALTY, n)


@torch.no_grad()
def _torch_call(model: torch.nn.Module, history: torch.Tensor, exclude: torch.Tensor) -> object:
    return model(history, exclude)


def run(quick: bool) -> list[Section]:
    """The scoring section: users/s per (catalogue, batch size), ONNX vs torch."""
    # Over 80 lines: one pass per catalogue whose rows share its model, session and random inputs.
    torch.set_num_threads(THREADS)
    settings = Settings(top_n=50)
    catalogues = [1_000] if quick else [10_000, 100_000]
    batches = [1, 64] if quick else [1, 64, 1024]
    figures: list[Figure] = []
    for n_items in catalogues:
        rng = np.random.default_rng(0)
        with tempfile.TemporaryDirectory() as out:
            vocabulary = [f"i{i}" for i in range(n_items)]
            model, _ = export_untrained_model(settings, vocabulary, Path(out), rng)
            options = ort.SessionOptions()
            options.intra_op_num_threads = THREADS
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            session = ort.InferenceSession(
                str(Path(out) / MODEL_FILE), options, providers=["CPUExecutionProvider"]
            )
        for batch in batches:
            history = rng.integers(1, n_items + 1, size=(batch, settings.max_seq_len))
            exclude = rng.integers(1, n_items + 1, size=(batch, settings.max_seq_len))
            calls = 4 if quick else max(1, 2048 // batch)
            feeds = {ONNX_INPUT_HISTORY: history, ONNX_INPUT_EXCLUDE: exclude}
            onnx = partial(session.run, None, feeds)
            eager = partial(_torch_call, model, torch.from_numpy(history), torch.from_numpy(exclude))
            figures.append(
                Figure(
                    f"onnxruntime, {n_items:,} items, batch {batch}",
                    "users/s",
                    repeat(partial(_users_per_second, onnx, calls, batch)),
                    "torch eager",
                    repeat(partial(_users_per_second, eager, calls, batch)),
                    target="≥ torch eager (ratio ≥ 1)",
                )
            )
        largest_batch = figures[-1]
        short_batch = 64
        short = rng.integers(1, n_items + 1, size=(short_batch, SHORT_HISTORY))
        full = rng.integers(1, n_items + 1, size=(short_batch, settings.max_seq_len))
        calls = 4 if quick else 2048 // short_batch
        figures.append(
            Figure(
                f"onnxruntime, {n_items:,} items, batch {short_batch}, {SHORT_HISTORY}-item histories",
                "users/s",
                repeat(
                    partial(_users_per_second, partial(session.run, None, _feeds(short)), calls, short_batch)
                ),
                f"{settings.max_seq_len}-item histories",
                repeat(
                    partial(_users_per_second, partial(session.run, None, _feeds(full)), calls, short_batch)
                ),
            )
        )
        # The knob: same model, same batch of full histories, with and without the re-rank.
        history = rng.integers(1, n_items + 1, size=(PENALTY_BATCH, settings.max_seq_len))
        feeds = {ONNX_INPUT_HISTORY: history, ONNX_INPUT_EXCLUDE: history}
        terms = popularity_terms(np.concatenate([[0], rng.integers(0, 1000, size=n_items)]))
        plain = partial(session.run, [ONNX_OUTPUT_SCORES, ONNX_OUTPUT_ITEMS], feeds)
        penalised = partial(_penalised_call, session, feeds, terms, settings.top_n)
        calls = 4 if quick else 2048 // PENALTY_BATCH
        on, off = _paired_users_per_second(penalised, plain, calls, PENALTY_BATCH)
        figures.append(
            Figure(
                f"popularity penalty on, {n_items:,} items, batch {PENALTY_BATCH}",
                "users/s",
                on,
                "penalty off",
                off,
                note=f"re-rank of the top {model.top_k} candidates; on and off measured in alternation",
            )
        )
        gflop = model_gflop_per_user(settings.embedding_dim, settings.max_seq_len, settings.n_blocks, n_items)
        best_batch = max(batches)
        head = torch.randn(best_batch, settings.embedding_dim)
        catalogue = torch.randn(settings.embedding_dim, n_items)
        matmul_gflop = 2 * best_batch * settings.embedding_dim * n_items / 1e9
        figures.append(
            Figure(
                f"onnxruntime GFLOP/s, {n_items:,} items, batch {best_batch}",
                "GFLOP/s",
                [users * gflop for users in largest_batch.runs],
                "plain matmul",
                repeat(partial(_gflops, partial(torch.matmul, head, catalogue), matmul_gflop)),
                note=f"{gflop * 1e3:.1f} MFLOP per user",
            )
        )
    image = throughput_bars(
        [fig for fig in figures if fig.unit == "users/s" and not fig.name.startswith("popularity penalty")],
        image_path("scoring-throughput.png", quick),
        title="Scoring throughput: onnxruntime against torch eager",
    )
    return [
        Section(
            "Scoring throughput (figure 4)",
            "python -m bench --only scoring" + (" --quick" if quick else ""),
            figures,
            description=(
                f"Default model (SASRec, {settings.n_blocks} blocks, dim {settings.embedding_dim}, "
                f"{settings.max_seq_len} items of history, top {settings.top_n}), {THREADS} threads for both "
                "runtimes. Users/s per call size; the popularity-penalty rows add the scorer's re-rank "
                f"(penalty {PENALTY}) to each call; the GFLOP/s rows count the model's arithmetic "
                "(bench/scoring.py: model_gflop_per_user) against a plain [batch, dim] x [dim, items] "
                "matrix product in torch."
            ),
            images=[image],
        )
    ]
