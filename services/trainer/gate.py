"""The quality gate: a new model is served only if it is not worse than the one served now.

Both models are measured the same way, through their exported ONNX files (what the scorer would
run), on the same holdout: the candidate's validation users, each with their most recent item held
out, their earlier items as history and excluded from the ranking. The candidate is promoted if
its metric (``settings.gate_metric``, NDCG@10 by default) is at least the served model's minus
``settings.gate_tolerance``. The first model has nothing to be compared with: it is promoted if
it beats recommending the most popular items on that holdout.

A rating model (``predicts_ratings``: rating-mf) is judged on its own objective instead, when the
served model is one too or nothing is served: the RMSE of the rating holdout (the rated events its
training held out, train_rating.py's :func:`rating_examples`), each predicted through the ONNX file
from its user's history as the scorer sends it. It is promoted if its RMSE is at most the served model's plus
``settings.gate_tolerance`` (on the holdout ratings of items both know), or, as the first model, if
it beats predicting the training ratings' mean. Between a rating model and a ranking model (a change
of ``STREAMREC_MODEL``) the only common measure is what the scorer serves, the ranking: the
NDCG@10 rule above.

Caveat, on the safe side: the served model may have been trained on some of the held-out events
(those that arrived before it), which flatters it; a candidate has to be clearly no worse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from streamrec.shared.logs import get_logger
from streamrec.shared.model_contract import MODEL_FILE, ONNX_INPUT_EXCLUDE, ONNX_INPUT_HISTORY, PADDING_INDEX
from streamrec.shared.registry import ModelIntegrityError, ModelManifest, ModelRegistry
from streamrec.shared.settings import Settings
from streamrec.trainer.dataset import SequenceDataset
from streamrec.trainer.model import predicts_ratings
from streamrec.trainer.train import METRIC_K, popularity_baseline
from streamrec.trainer.train_rating import rating_errors, rating_examples

log = get_logger(__name__)

# Holdout users scored per onnxruntime call.
GATE_BATCH = 512
# Rating holdout: at most this many ratings are predicted (spread over the holdout), and the
# exclude lists of one onnxruntime call hold at most this many item indices.
GATE_RATINGS = 20_000
GATE_EXCLUDE_INDICES = 1 << 22
RATING_METRIC = "rmse"


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided about a candidate, and the numbers it decided on."""

    promote: bool
    reason: str
    candidate: float  # the candidate's holdout metric
    baseline: float | None  # the served model's (or popularity's) on the same holdout
    baseline_name: str  # "promoted <version>", "popularity", "mean rating" or "none"
    metric: str = ""  # the metric decided on, if not settings.gate_metric ("rmse": a rating model)

    def as_metrics(self, metric: str) -> dict[str, float]:
        """The numbers for the manifest's metrics."""
        metric = self.metric or metric
        values = {f"holdout_{metric}": self.candidate}
        if self.baseline is not None:
            values[f"holdout_{metric}_baseline"] = self.baseline
        return values


def holdout_metrics(registry: ModelRegistry, version: str, dataset: SequenceDataset) -> dict[str, float]:
    """NDCG@10 and HR@10 of a registry version on ``dataset``'s validation users, via onnxruntime.

    Items the version does not know are left out of its input (as the scorer does); a held-out
    item it does not know counts as a miss.
    """
    manifest, session, to_model = _open_version(registry, version, dataset)
    users = dataset.val_users
    ndcg = hits = 0.0
    for start in range(0, len(users), GATE_BATCH):
        chunk = users[start : start + GATE_BATCH]
        history = _left_aligned_known(to_model[dataset.val_histories(chunk)], manifest.max_seq_len)
        rows, items = dataset.val_seen(chunk)
        width = max(1, int(np.bincount(rows, minlength=len(chunk)).max(initial=1)))
        exclude = np.zeros((len(chunk), width), dtype=np.int64)
        column = np.arange(len(rows)) - np.searchsorted(rows, rows)  # position within each row
        exclude[rows, column] = to_model[items]
        _, ranked = session.run(None, {ONNX_INPUT_HISTORY: history, ONNX_INPUT_EXCLUDE: exclude})
        targets = to_model[dataset.val_targets(chunk)]
        found = (ranked[:, :METRIC_K] == targets[:, None]) & (targets[:, None] != PADDING_INDEX)
        rank = found.argmax(axis=1)
        hit = found.any(axis=1)
        ndcg += float(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0).sum())
        hits += float(hit.sum())
    n = max(1, len(users))
    return {f"ndcg@{METRIC_K}": ndcg / n, f"hr@{METRIC_K}": hits / n}


def _open_version(
    registry: ModelRegistry, version: str, dataset: SequenceDataset
) -> tuple[ModelManifest, ort.InferenceSession, np.ndarray]:
    """A verified version's manifest, an onnxruntime session of its model, and the map from
    ``dataset``'s item indices to the version's (0 = unknown to it, i.e. padding)."""
    manifest = registry.verify(version)
    index_of = {item: index for index, item in enumerate(registry.vocabulary(version), start=1)}
    to_model = np.array([PADDING_INDEX] + [index_of.get(item, PADDING_INDEX) for item in dataset.vocabulary])
    session = ort.InferenceSession(
        str(registry.path(version) / MODEL_FILE), providers=["CPUExecutionProvider"]
    )
    return manifest, session, to_model


def _left_aligned_known(history: np.ndarray, length: int) -> np.ndarray:
    """Drop unknown (0) items from each row, keep the last ``length`` known ones, left-padded."""
    out = np.zeros((len(history), length), dtype=np.int64)
    for row, items in enumerate(history):
        known = items[items != PADDING_INDEX][-length:]
        if len(known):
            out[row, length - len(known) :] = known
    return out


def judge(
    registry: ModelRegistry, candidate: str, dataset: SequenceDataset, settings: Settings
) -> GateDecision:
    """Decide whether ``candidate`` may replace the promoted version (see the module docstring)."""
    served_version = registry.promoted_version()
    if _predicts_ratings(registry, candidate) and (
        served_version is None or _predicts_ratings(registry, served_version)
    ):
        return _judge_ratings(registry, candidate, dataset, settings)
    metric = settings.gate_metric
    if len(dataset.val_users) == 0:
        return GateDecision(
            True, "no holdout users to compare on (every user has < 3 events)", 0.0, None, "none"
        )
    score = holdout_metrics(registry, candidate, dataset)[metric]
    served = registry.promoted_version()
    if served is not None:
        try:
            served_score = holdout_metrics(registry, served, dataset)[metric]
        except ModelIntegrityError as exc:
            log.warning("promoted model unusable; judging against popularity", extra={"error": str(exc)})
        else:
            passed = score >= served_score - settings.gate_tolerance
            verdict = "not worse than" if passed else "worse than"
            reason = (
                f"holdout {metric} {score:.4f} {verdict} promoted {served}'s {served_score:.4f} "
                f"(tolerance {settings.gate_tolerance})"
            )
            return GateDecision(passed, reason, score, served_score, f"promoted {served}")
    ndcg, hr = popularity_baseline(dataset)
    popular = ndcg if metric == f"ndcg@{METRIC_K}" else hr
    passed = score > popular
    reason = f"first model: holdout {metric} {score:.4f} {'beats' if passed else 'does not beat'} popularity's {popular:.4f}"
    return GateDecision(passed, reason, score, popular, "popularity")


def _predicts_ratings(registry: ModelRegistry, version: str) -> bool:
    """True if the version is a rating model's (its manifest's model type); False if unreadable."""
    try:
        model_type = registry.manifest(version).model_type
    except ModelIntegrityError:
        return False
    return predicts_ratings(model_type)


def holdout_ratings(
    registry: ModelRegistry, version: str, dataset: SequenceDataset, positions: np.ndarray
) -> np.ndarray:
    """A registry version's rating of the events at ``positions`` of ``dataset``, via onnxruntime,
    float64 [len(positions)]; NaN where the version does not know the item.

    The graph returns top-k: with every item but the rated one excluded, its top-1 is that item's
    score, the predicted rating (clipped to the version's training range, as in training).
    """
    manifest, session, to_model = _open_version(registry, version, dataset)
    targets = to_model[dataset.items[positions]]
    known = np.flatnonzero(targets != PADDING_INDEX)
    every_item = np.arange(PADDING_INDEX + 1, manifest.n_items + 1, dtype=np.int64)
    predicted = np.full(len(positions), np.nan)
    batch = max(1, GATE_EXCLUDE_INDICES // manifest.n_items)
    for start in range(0, len(known), batch):
        rows = known[start : start + batch]
        users = dataset.owners(positions[rows])
        history = _left_aligned_known(to_model[dataset.fitting_histories(users)], manifest.max_seq_len)
        exclude = np.tile(every_item, (len(rows), 1))
        exclude[np.arange(len(rows)), targets[rows] - 1] = PADDING_INDEX  # column i - 1 holds item i
        scores, _ = session.run(None, {ONNX_INPUT_HISTORY: history, ONNX_INPUT_EXCLUDE: exclude})
        predicted[rows] = scores[:, 0]
    low = manifest.metrics.get("rating_min", -np.inf)
    high = manifest.metrics.get("rating_max", np.inf)
    return np.clip(predicted, low, high)


def _judge_ratings(
    registry: ModelRegistry, candidate: str, dataset: SequenceDataset, settings: Settings
) -> GateDecision:
    """The rating model's gate: holdout RMSE (see the module docstring)."""
    holdout = rating_examples(dataset, settings).validation
    if len(holdout) == 0:
        return GateDecision(True, "no holdout ratings to compare on", 0.0, None, "none", RATING_METRIC)
    holdout = holdout[:: -(-len(holdout) // GATE_RATINGS)]
    actual = dataset.values[holdout]  # type: ignore[index]  # rated events imply values
    predicted = holdout_ratings(registry, candidate, dataset, holdout)
    served = registry.promoted_version()
    if served is not None:
        try:
            served_predicted = holdout_ratings(registry, served, dataset, holdout)
        except ModelIntegrityError as exc:
            log.warning("promoted model unusable; judging against the mean rating", extra={"error": str(exc)})
        else:
            both = ~np.isnan(served_predicted)
            score = rating_errors(predicted[both], actual[both])["rmse"]
            served_score = rating_errors(served_predicted[both], actual[both])["rmse"]
            passed = score <= served_score + settings.gate_tolerance
            verdict = "not worse than" if passed else "worse than"
            reason = (
                f"holdout {RATING_METRIC} {score:.4f} {verdict} promoted {served}'s {served_score:.4f} "
                f"(tolerance {settings.gate_tolerance}, {int(both.sum())} ratings)"
            )
            return GateDecision(passed, reason, score, served_score, f"promoted {served}", RATING_METRIC)
    score = rating_errors(predicted, actual)["rmse"]
    mean = registry.manifest(candidate).metrics["rating_mean"]
    baseline = rating_errors(np.full(len(actual), mean), actual)["rmse"]
    passed = score < baseline
    reason = (
        f"first model: holdout {RATING_METRIC} {score:.4f} {'beats' if passed else 'does not beat'} "
        f"the mean rating's {baseline:.4f}"
    )
    return GateDecision(passed, reason, score, baseline, "mean rating", RATING_METRIC)
