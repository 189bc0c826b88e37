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

import numpy as np

from streamrec.shared.datasets import load_interactions
from streamrec.shared.logs import get_logger
from streamrec.shared.settings import Settings
from streamrec.trainer.evaluation.baselines import EASE, ItemKNN, MostPop
from streamrec.trainer.evaluation.bias import BiasReference, bias_metrics, debias_curve, phase_candidates
from streamrec.trainer.evaluation.models import TrainerModel
from streamrec.trainer.evaluation.protocol import METRIC_NAMES, Split, metrics_from_ranks, split_interactions
from streamrec.trainer.evaluation.recommender import Recommender
from streamrec.trainer.evaluation.similar import (
    cooccurrence_similarity,
    embedding_similarity,
    similar_metrics,
)
from streamrec.trainer.model import MODELS as TRAINER_MODELS
from streamrec.trainer.model import predicts_ratings

log = get_logger(__name__)

# Model name -> factory. Every model family the trainer can build is evaluated through the adapter,
# so a new entry in streamrec.trainer.model.MODELS (e.g. "sasrec") needs no change here.
MODELS: dict[str, Callable[[Settings], Recommender]] = {
    "mostpop": lambda settings: MostPop(),
    "itemknn": lambda settings: ItemKNN(),
    "ease": lambda settings: EASE(),
    **{name: partial(TrainerModel, name) for name in TRAINER_MODELS},
}
# Evaluated when no model is named: all but the rating models (rating-mf), which need rated events
# and are `--task rating`'s; named (``--models rating-mf``), one is ranked like any other.
DEFAULT_MODELS = [name for name in MODELS if not predicts_ratings(name)]


class EvaluationError(Exception):
    """Evaluation cannot run (unknown model name, no evaluable user); the message says why."""


def evaluate(
    dataset: Path,
    models: list[str] | None,
    settings: Settings,
    plot: Path | None = None,
    penalties: list[float] | None = None,
) -> dict[str, Any]:
    """Evaluate ``models`` (default: :data:`DEFAULT_MODELS`) on an interaction file.

    Returns ``{"dataset", "users", "items", "models": [{"name", "default", "ndcg@10", "hr@10",
    "ndcg@20", "hr@20", "mrr", "train_seconds", "params"}, …], "tuning": {name: {"params",
    "validation", "seconds", "curve"}}}``: test metrics per model; ``default`` marks
    ``settings.model``; ``train_seconds`` is the final fit on train + validation (tuning time is in
    ``tuning``). ``similar``: ``[{"name", "hr@10", "ndcg@10", "mrr"}, …]``, the test item among the
    previous item's similar items, for each model with item embeddings and for item-kNN (see
    :mod:`.similar`; empty if no model has embeddings). With ``plot``, also writes the chart of
    :func:`.report.plot_result` there.

    Every model entry also has the bias metrics of its test top-10 lists (:mod:`.bias`:
    ``coverage@10``, ``arp@10``, ``tail@10``, ``ndcg@10 short|medium|long``); ``bias`` describes
    what they are measured against. With ``penalties``, every entry gets ``debias``: the points of
    :func:`.bias.debias_curve` over ``settings.top_n`` candidates, the scorer's popularity penalty,
    and ``debias`` at the top level says so (``{"candidates", "penalties"}``; the chart then
    has a second row: NDCG@10 against coverage@10 and against tail@10).
    """
    names = DEFAULT_MODELS if models is None else models
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        raise EvaluationError(
            f"unknown model(s) {', '.join(map(repr, unknown)) or '(none given)'}; known: {', '.join(MODELS)}"
        )
    split = split_interactions(load_interactions(dataset))
    if len(split.evaluated) == 0:
        raise EvaluationError(f"{dataset}: no user has 3 or more interactions, nothing to evaluate")
    rated = split.train.values is not None and not np.isnan(split.train.values).all()
    if not rated and (raters := [name for name in names if name not in DEFAULT_MODELS]):
        raise EvaluationError(f"{', '.join(raters)} needs events with a value (ratings): {dataset} has none")
    if penalties is not None and (not penalties or any(not penalty >= 0 for penalty in penalties)):
        raise EvaluationError(f"popularity penalties must be >= 0, got {penalties}")
    reference = BiasReference.of(split.test())

    result: dict[str, Any] = {
        "dataset": str(dataset),
        "users": len(split.evaluated),
        "items": split.n_items,
        "models": [],
        "tuning": {},
        "similar": [],
        "bias": reference.describe(),
    }
    if penalties is not None:
        result["debias"] = {"candidates": settings.top_n, "penalties": penalties}
    for name in names:
        model = MODELS[name](settings)
        entry, tuning = evaluate_model(
            model, split, name == settings.model, reference, settings.top_n, penalties
        )
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
        from streamrec.trainer.evaluation.report import (
            plot_result,  # matplotlib only when a plot is asked for
        )

        plot_result(result, plot)
    return result


def evaluate_model(
    model: Recommender,
    split: Split,
    is_default: bool = False,
    reference: BiasReference | None = None,
    candidates: int = Settings.model_fields["top_n"].default,
    penalties: list[float] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tune on validation, refit on train + validation, rank on test: (model entry, tuning details).

    The entry has the protocol's metrics, the bias metrics of the test top-10 lists against
    ``reference`` (default: the split's test phase) and, with ``penalties``, the ``debias`` curve
    over the top ``candidates``."""
    log.info("evaluating", extra={"model": model.name})
    tuning = model.tune(split.validation())
    test = split.test()
    started = time.perf_counter()
    model.fit(test.fitting)
    train_seconds = time.perf_counter() - started
    ranks, scores, items = phase_candidates(model.score, test, candidates)
    metrics = metrics_from_ranks(ranks)
    reference = reference or BiasReference.of(test)
    entry: dict[str, Any] = {"name": model.name, "default": is_default}
    entry |= {metric: metrics[metric] for metric in ("ndcg@10", "hr@10", "ndcg@20", "hr@20", "mrr")}
    entry |= bias_metrics(ranks, scores, items, reference)
    entry |= {"train_seconds": round(train_seconds, 3), "params": model.n_params()}
    if penalties is not None:
        entry["debias"] = debias_curve(scores, items, reference, penalties)
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
