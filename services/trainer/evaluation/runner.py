"""``streamrec evaluate``: run the chosen models through both phases of the protocol.

For each model: tune on validation (:meth:`Recommender.tune`), refit from scratch on train +
validation, rank on test. The result is a JSON-ready dict (see :func:`evaluate`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from streamrec.shared.datasets import load_interactions
from streamrec.shared.logs import get_logger
from streamrec.shared.settings import Settings
from streamrec.trainer.model import MODELS as TRAINER_MODELS

from .baselines import EASE, ItemKNN, MostPop
from .models import TrainerModel
from .protocol import METRIC_NAMES, Split, evaluate_phase, split_interactions
from .recommender import Recommender
from .similar import cooccurrence_similarity, embedding_similarity, similar_metrics

log = get_logger(__name__)

# Model name -> factory. Every model family the trainer can build is evaluated through the adapter,
# so a new entry in streamrec.trainer.model.MODELS (e.g. "sasrec") needs no change here.
MODELS: dict[str, Callable[[Settings], Recommender]] = {
    "mostpop": lambda settings: MostPop(),
    "itemknn": lambda settings: ItemKNN(),
    "ease": lambda settings: EASE(),
    **{name: partial(TrainerModel, name) for name in TRAINER_MODELS},
}


class EvaluationError(Exception):
    """Evaluation cannot run (unknown model name, no evaluable user); the message says why."""


def evaluate(
    dataset: Path, models: list[str] | None, settings: Settings, plot: Path | None = None
) -> dict[str, Any]:
    """Evaluate ``models`` (default: all of :data:`MODELS`) on an interaction file.

    Returns ``{"dataset", "users", "items", "models": [{"name", "default", "ndcg@10", "hr@10",
    "ndcg@20", "hr@20", "mrr", "train_seconds", "params"}, …], "tuning": {name: {"params",
    "validation", "seconds", "curve"}}}``: test metrics per model; ``default`` marks
    ``settings.model``; ``train_seconds`` is the final fit on train + validation (tuning time is in
    ``tuning``). ``similar``: ``[{"name", "hr@10", "ndcg@10", "mrr"}, …]``, the test item among the
    previous item's similar items, for each model with item embeddings and for item-kNN (see
    :mod:`.similar`; empty if no model has embeddings). With ``plot``, also writes the chart of
    :func:`.report.plot_result` there.
    """
    names = list(MODELS) if models is None else models
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        raise EvaluationError(
            f"unknown model(s) {', '.join(map(repr, unknown)) or '(none given)'}; known: {', '.join(MODELS)}"
        )
    split = split_interactions(load_interactions(dataset))
    if len(split.evaluated) == 0:
        raise EvaluationError(f"{dataset}: no user has 3 or more interactions, nothing to evaluate")

    result: dict[str, Any] = {
        "dataset": str(dataset),
        "users": len(split.evaluated),
        "items": split.n_items,
        "models": [],
        "tuning": {},
        "similar": [],
    }
    for name in names:
        model = MODELS[name](settings)
        entry, tuning = evaluate_model(model, split, is_default=name == settings.model)
        result["models"].append(entry)
        result["tuning"][name] = tuning
        vectors = model.model.item_embeddings() if isinstance(model, TrainerModel) and model.model else None
        if vectors is not None:  # the test-phase model's embeddings, row i = protocol item i
            similarity = embedding_similarity(vectors)
            result["similar"].append({"name": name, **similar_metrics(similarity, split.test())})
    if result["similar"]:
        test = split.test()
        result["similar"].append(
            {"name": "item-knn cosine", **similar_metrics(cooccurrence_similarity(test.fitting), test)}
        )
    if plot is not None:
        from .report import plot_result  # matplotlib only when a plot is asked for

        plot_result(result, plot)
    return result


def evaluate_model(
    model: Recommender, split: Split, is_default: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tune on validation, refit on train + validation, rank on test: (model entry, tuning details)."""
    log.info("evaluating", extra={"model": model.name})
    tuning = model.tune(split.validation())
    test = split.test()
    started = time.perf_counter()
    model.fit(test.fitting)
    train_seconds = time.perf_counter() - started
    metrics = evaluate_phase(model.score, test)
    entry: dict[str, Any] = {"name": model.name, "default": is_default}
    entry |= {metric: metrics[metric] for metric in ("ndcg@10", "hr@10", "ndcg@20", "hr@20", "mrr")}
    entry |= {"train_seconds": round(train_seconds, 3), "params": model.n_params()}
    details = {
        "params": tuning.params,
        "validation": {metric: tuning.validation[metric] for metric in METRIC_NAMES},
        "seconds": round(tuning.seconds, 3),
        "curve": tuning.curve,
    }
    log.info(
        "evaluated",
        extra={"model": model.name, "test_ndcg@10": round(metrics["ndcg@10"], 5), "chosen": tuning.params},
    )
    return entry, details
