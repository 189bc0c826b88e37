"""The scorer's Prometheus metrics (served on STREAMREC_METRICS_PORT, see shared/ops.py) and the
counts its progress log lines report."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prometheus_client import Counter, Gauge, Histogram

LISTS_WRITTEN = Counter(
    "streamrec_scorer_lists_total", "Recommendation lists written to Redis, by source.", ["source", "trigger"]
)
SCORING_SECONDS = Histogram(
    "streamrec_scorer_scoring_seconds",
    "Time to score one micro-batch (model or fallback), before the Redis write.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
FRESHNESS_SECONDS = Histogram(
    "streamrec_scorer_freshness_seconds",
    "From ingest's feature update to the user's new list in Redis.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
REDIS_WRITE_ERRORS = Counter("streamrec_scorer_redis_errors_total", "Failed Redis operations (then retried).")
MODEL_IN_USE = Gauge("streamrec_scorer_model_info", "1 for the model version served now.", ["version"])
MODELS_REFUSED = Counter("streamrec_scorer_models_refused_total", "Model versions refused at load.")
RESCORE_QUEUE = Gauge("streamrec_scorer_rescore_queue", "Users waiting to be re-scored after a swap.")
CONSUMER_LAG = Gauge(
    "streamrec_scorer_consumer_lag", "Messages behind the partition's end (this scorer's partitions)."
)


@dataclass(slots=True)
class ScorerCounts:
    """What the scorer did since it started, for its "scorer progress" and "scorer stopped" lines."""

    batches: int = 0
    messages: int = 0
    personal: int = 0
    fallback: int = 0
    rescored: int = 0
    erased: int = 0

    def as_log_fields(self) -> dict[str, int]:
        """The counts as log fields, in the order above."""
        return asdict(self)
