"""The one settings object of streamrec, read from ``STREAMREC_*`` environment variables.

Every service, the CLI, the embedded stack and docker-compose use the same names. A setting
``foo_bar`` is read from ``STREAMREC_FOO_BAR``. ``kafka_bootstrap`` and ``redis_url`` left unset
mean "start the embedded one" for ``streamrec dev`` / ``streamrec demo``; a service started on
its own (``streamrec ingest`` …) needs them set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamrec.shared.redaction import redacted_url
from streamrec.shared.redis_urls import parse_redis_url

ENV_PREFIX = "STREAMREC_"

# Training hyper-parameters whose best value depends on the model family, chosen on the validation
# phase of `streamrec evaluate` (docs/evaluation.md). A setting left unset takes its model's value.
MODEL_DEFAULTS: dict[str, dict[str, int | float | str]] = {
    "mf": {
        "max_seq_len": 50,
        "embedding_dim": 64,
        "dropout": 0.0,  # unused by mf
        "epochs": 30,
        "patience": 3,
        "batch_size": 512,
        "learning_rate": 5e-3,
        "windows_per_user": 0,  # unused by mf
        "item_init": "random",
        "weight_average_decay": 0.0,
    },
    "sasrec": {
        "max_seq_len": 50,
        "embedding_dim": 64,
        "dropout": 0.2,
        "epochs": 60,  # an upper bound: validation stops it after 10-20 on MovieLens
        "patience": 4,
        "batch_size": 32,
        "learning_rate": 2e-3,
        "windows_per_user": 4,
        "item_init": "cooccurrence",
        "weight_average_decay": 0.995,
    },
    "rating-mf": {
        "max_seq_len": 200,  # the history a rating is predicted from: the whole ingest window
        "embedding_dim": 64,
        "dropout": 0.0,  # unused by rating-mf
        "epochs": 60,  # an upper bound: validation RMSE stops it
        "patience": 3,
        "batch_size": 1024,  # rated events per step
        "learning_rate": 3e-3,
        "windows_per_user": 0,  # unused by rating-mf
        "item_init": "random",
        "weight_average_decay": 0.0,  # unused by rating-mf
    },
}


class Settings(BaseSettings):
    """All configuration of streamrec. See ``docs/configuration.md`` for the full table."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    # --- where the servers are -----------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        None, description="Kafka bootstrap servers, host:port[,host:port]. Unset: embedded."
    )
    redis_url: str | None = Field(
        None,
        description="redis://[[user]:password@]host:port/db; rediss:// for TLS. A Redis Cluster: "
        "redis+cluster://[[user]:password@]host:port[,host:port…] (rediss+cluster:// for TLS); a Sentinel "
        "group: redis+sentinel://[[user]:password@]host:port[,host:port…]/<master name>/<db> (the sentinels; "
        "user and password are the primary's; rediss+sentinel:// for TLS). Unset: embedded. "
        "Never logged with its password.",
    )
    redis_sentinel_password: SecretStr | None = Field(
        None,
        description="redis+sentinel://: the sentinels' own password (their requirepass), if they have one. "
        "The primary's password goes in the URL.",
    )
    # Redis TLS (rediss://): redis-py verifies the server's certificate and host name by default.
    redis_tls_ca_file: Path | None = Field(
        None, description="rediss://: CA certificate(s), PEM, to verify Redis with. Unset: the system's CAs."
    )
    redis_tls_cert_file: Path | None = Field(
        None,
        description="rediss://: client certificate, PEM, for a Redis that requires one (tls-auth-clients).",
    )
    redis_tls_key_file: Path | None = Field(
        None, description="rediss://: private key, PEM, of the client certificate. Unset: in the cert file."
    )

    # --- topics (contracts between services; see shared/kafka_topics.py) ---------------
    topic_interactions: str = Field("interactions", description="Input topic of raw events.")
    topic_dlq: str = Field("interactions.dlq", description="Dead letters: invalid events + reason.")
    topic_user_features: str = Field(
        "streamrec.user-features", description="ingest -> scorer, trainer: a user's features changed."
    )
    topic_item_events: str = Field(
        "streamrec.item-events", description="ingest internal: popularity deltas of accepted events."
    )
    topic_popular_items: str = Field(
        "streamrec.popular-items", description="ingest -> scorer: current most popular items."
    )
    topic_models: str = Field("streamrec.models", description="trainer -> scorer: new model announced.")
    topic_items: str = Field("items", description="Input topic of the item catalog (key = item id).")
    topic_items_dlq: str = Field("items.dlq", description="Dead letters: invalid catalog messages + reason.")
    topic_catalog: str = Field(
        "streamrec.catalog", description="ingest -> scorer: validated catalog changes."
    )
    topic_control: str = Field(
        "streamrec.control", description="API, CLI -> ingest: requests to erase a user (per-user partitions)."
    )
    partitions: int = Field(4, ge=1, description="Partitions of the per-user topics.")
    replication_factor: int = Field(1, ge=1, description="Replication of topics streamrec creates.")
    kafka_fetch_wait_ms: int = Field(
        20,
        ge=0,
        le=5000,
        description="Longest a consumer's fetch waits for data (scorer, trainer; ingest has its own): "
        "lower = fresher, more idle requests (docs/latency-tuning.md).",
    )
    kafka_session_timeout_ms: int = Field(
        30_000,
        ge=1000,
        description="Consumer group session timeout: how fast a dead consumer's partitions move. Above "
        "a Kafka cluster's failover time (a KRaft broker is fenced 9 s after it dies), so that a consumer "
        "keeps its partitions while its group coordinator moves; the embedded broker uses 10 s.",
    )

    # --- Kafka security (shared/kafka_config.py turns these into every client's config) ---
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How clients talk to Kafka: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT (SASL without TLS: "
        "the password crosses the network readable, test setups only) or SASL_SSL.",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism (SASL_* protocols): PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name (required by SASL_*).")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password (required by SASL_*); never logged or printed."
    )
    kafka_ssl_ca_file: Path | None = Field(
        None,
        description="PEM file of the CA(s) that signed the broker certificates (SSL, SASL_SSL). "
        "Unset: the system trust store.",
    )
    kafka_ssl_cert_file: Path | None = Field(
        None, description="PEM client certificate, for brokers that require mutual TLS (with the key file)."
    )
    kafka_ssl_key_file: Path | None = Field(None, description="PEM private key of the client certificate.")
    kafka_ssl_key_password: SecretStr | None = Field(
        None, description="Password of an encrypted client key file; never logged or printed."
    )

    # --- storage ---------------------------------------------------------------------------
    data_dir: Path = Field(Path("var"), description="Root of local state (tables, trainer log, runs).")
    model_dir: Path | None = Field(None, description="Model registry directory. Default data_dir/models.")
    redis_prefix: str = Field("streamrec", description="Prefix of every Redis key streamrec writes.")
    recs_ttl_seconds: int = Field(0, ge=0, description="TTL of cached lists in Redis; 0 = keep.")
    recs_format: Literal["binary", "json"] = Field(
        "binary",
        description="Format the scorer writes cached lists in: binary (compact), or json while readers "
        "older than the binary format still read Redis. Readers take both.",
    )

    # --- features (ingest) -----------------------------------------------------------------
    history_len: int = Field(200, ge=1, description="Recent items kept per user (and excluded).")
    dedup_window: int = Field(1000, ge=0, description="Recent event_ids remembered per user.")
    max_event_bytes: int = Field(65536, ge=64, description="Larger messages go to the DLQ.")
    max_future_seconds: float = Field(86400.0, ge=0, description="Accepted clock skew of timestamps.")
    popularity_half_life_hours: float = Field(24.0 * 7, gt=0, description="Decay of item popularity.")
    popular_publish_seconds: float = Field(5.0, gt=0, description="How often ingest publishes popular items.")
    ingest_web_port: int = Field(0, ge=0, description="Faust web port of ingest; 0 = disabled.")
    ingest_batch_max: int = Field(
        10_000,
        ge=1,
        description="Most input records one ingest fetch returns over all its partitions; each "
        "partition's share is folded as one batch.",
    )
    ingest_batch_wait_ms: int = Field(
        50,
        ge=1,
        le=5000,
        description="Longest ingest's fetch waits for events: a batch's span, so at most this is added "
        "to an event's latency; longer = fewer, larger record batches on the broker.",
    )

    ingest_stop_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest ingest's graceful stop (commit, flush) may take before it exits anyway; "
        "the next start then reads again from the committed offsets.",
    )
    ingest_table_memory_mb: int = Field(
        32,
        ge=4,
        description="RocksDB memory of each ingest table partition, at most (an eighth block cache, "
        "two write buffers of a quarter each); ingest's table memory is below this × (partitions + 1).",
    )
    erasure_hold_seconds: float = Field(
        86_400.0,
        gt=0,
        description="After `streamrec users forget`, how long ingest drops the user's events stamped "
        "before the request (still in flight); it keeps only a hash of the id meanwhile.",
    )

    # --- model and training (trainer) -------------------------------------------------------
    model: Literal["mf", "sasrec", "rating-mf"] = Field(
        "sasrec",
        description="Model family the trainer fits: sasrec (sequential), mf (baseline) or rating-mf "
        "(predicts events' values, e.g. ratings, and ranks by them).",
    )
    top_n: int = Field(50, ge=1, description="Recommendations cached per user.")
    # None below = "the chosen model's value in MODEL_DEFAULTS"; validation fills it, so after
    # construction these are never None.
    max_seq_len: int | None = Field(None, ge=1, description="History items the model reads per user.")
    embedding_dim: int | None = Field(None, ge=4, description="Size of item embeddings.")
    n_blocks: int = Field(2, ge=1, description="Transformer blocks (sasrec).")
    n_heads: int = Field(1, ge=1, description="Attention heads per block (sasrec); divides embedding_dim.")
    dropout: float | None = Field(None, ge=0, lt=1, description="Dropout rate (sasrec).")
    epochs: int | None = Field(None, ge=1, description="Upper bound; training stops early on validation.")
    patience: int | None = Field(None, ge=1, description="Epochs without validation gain before stopping.")
    batch_size: int | None = Field(
        None, ge=1, description="Training examples per optimiser step (sasrec: sequence windows)."
    )
    learning_rate: float | None = Field(None, gt=0, description="Adam learning rate.")
    item_init: Literal["random", "cooccurrence"] | None = Field(
        None, description="Initial item embeddings: random, or from co-occurrence in the training data."
    )
    windows_per_user: int | None = Field(
        None, ge=0, description="sasrec: windows of a user drawn per epoch (heavy users); 0 = all."
    )
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty of the optimiser.")
    weight_average_decay: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Decay of an exponential moving average of the weights, updated every step; the "
        "average is what is validated and kept. 0 = off (the raw weights).",
    )
    rating_l2: float = Field(
        0.003, ge=0, description="rating-mf: λ of the L2 penalty on the parameters each rating uses."
    )
    train_threads: int = Field(0, ge=0, description="Torch threads for training; 0 = one per core.")
    seed: int = Field(42, description="Random seed: same data + seed = same model.")
    train_interval_seconds: float = Field(300.0, gt=0, description="Trainer: time between cycles.")
    train_min_new_events: int = Field(1000, ge=1, description="Trainer: new events that trigger a retrain.")
    train_trigger: Literal["any", "all"] = Field(
        "any",
        description="Trainer: retrain when the interval passed (and anything arrived) OR enough new events "
        "arrived (any), or only when both hold (all).",
    )
    train_window_events: int = Field(5_000_000, ge=1, description="Trainer: most recent events trained on.")
    train_window_days: float = Field(
        0.0, ge=0, description="Trainer: also drop events older than this many days (by timestamp); 0 = keep."
    )
    gate_metric: Literal["ndcg@10", "hr@10"] = Field(
        "ndcg@10", description="Quality gate: holdout metric a new model must not lose on."
    )
    gate_tolerance: float = Field(
        0.005, ge=0, description="Quality gate: how much worse than the served model a new one may be."
    )
    model_keep_versions: int = Field(
        10, ge=1, description="Registry: newest versions kept (plus the promoted one and its predecessor)."
    )

    # --- scoring (scorer) -------------------------------------------------------------------
    scorer_batch_size: int = Field(
        32, ge=1, description="Users scored per inference (and written to Redis before the next)."
    )
    scorer_batch_wait_ms: int = Field(
        0,
        ge=0,
        description="Max wait for more messages after a micro-batch's first; 0 = score what is already "
        "fetched (adds no latency; under load the fetched backlog fills batches anyway).",
    )
    scorer_threads: int = Field(
        1,
        ge=1,
        description="onnxruntime threads per inference. 1 spends the least CPU per user (the cores are "
        "shared with ingest and the broker); more score one batch sooner on cores of its own.",
    )
    scorer_recent_users: int = Field(100_000, ge=0, description="Users remembered for re-scoring.")
    scorer_rescore_per_second: int = Field(
        5000, ge=0, description="Re-scoring after a model swap: users per second at most; 0 = no limit."
    )
    scorer_popularity_penalty: float = Field(
        0.0,
        ge=0,
        le=10,
        description="Popularity debiasing: re-rank the model's top_k candidates by score - penalty × "
        "ln(1 + the item's training interactions), 0–10; 0 = off (lists exactly the model's). In model-score "
        "units: 0.25 costs sasrec 0.2–5 % NDCG@10 for ~12 % more catalogue coverage (docs/evaluation.md has "
        "the trade-off); needs a version with item_popularity.npy.",
    )

    # --- read path (api) --------------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="HTTP API bind address.")
    api_port: int = Field(8000, ge=0, le=65535, description="HTTP API port.")
    api_max_n: int = Field(100, ge=1, description="Largest n the HTTP endpoint serves.")
    api_admin_token: SecretStr | None = Field(
        None,
        description="Bearer token of the HTTP API's write endpoints (DELETE /users/{id}); unset = they "
        "answer 503. Never logged or printed.",
    )

    # --- operations -------------------------------------------------------------------------
    metrics_host: str = Field("127.0.0.1", description="Bind address of the metrics/health endpoints.")
    metrics_port: int = Field(
        9100,
        ge=0,
        le=65535,
        description="ingest, scorer, trainer: /metrics, /healthz, /readyz on this port; 0 = off. "
        "The api serves them on its own port.",
    )
    status_endpoints: str = Field(
        "",
        description="`streamrec status`: each service's ops endpoint as name=URL, comma-separated "
        "(e.g. ingest=http://127.0.0.1:9100); `streamrec dev` writes them to its env file.",
    )

    # --- logging ----------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log threshold.")
    log_format: Literal["json", "console"] = Field(
        "json", description="json: one JSON object per line; console: readable lines."
    )

    @field_validator("kafka_bootstrap", "redis_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port], got {value!r}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None:
            # The message ends up in logs: never the password, even of a malformed URL.
            parse_redis_url(value)
        return value

    @field_validator("redis_tls_key_file")
    @classmethod
    def _key_needs_cert(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("redis_tls_cert_file") is None:
            raise ValueError(f"a client key without a certificate: set {ENV_PREFIX}REDIS_TLS_CERT_FILE too")
        return value

    def __repr_args__(self) -> Any:
        # repr(settings) and settings dumps in logs or tracebacks show the Redis URL redacted.
        for name, value in super().__repr_args__():
            yield name, redacted_url(value) if name == "redis_url" else value

    @field_validator(
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_ca_file",
        "kafka_ssl_cert_file",
        "kafka_ssl_key_file",
        "kafka_ssl_key_password",
        mode="before",
    )
    @classmethod
    def _blank_kafka_security_is_unset(cls, value: object) -> object:
        # An empty line in .env (`STREAMREC_KAFKA_SASL_PASSWORD=`) means "not set", not "empty".
        return None if isinstance(value, str) and not value else value

    @field_validator("kafka_ssl_ca_file", "kafka_ssl_cert_file", "kafka_ssl_key_file")
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @model_validator(mode="after")
    def _check_kafka_security(self) -> Settings:
        protocol = self.kafka_security_protocol
        sasl, tls = protocol.startswith("SASL_"), protocol in ("SSL", "SASL_SSL")
        p = ENV_PREFIX + "KAFKA_"
        if sasl and (self.kafka_sasl_username is None or self.kafka_sasl_password is None):
            raise ValueError(f"{p}SECURITY_PROTOCOL={protocol} needs {p}SASL_USERNAME and {p}SASL_PASSWORD")
        if not sasl and (self.kafka_sasl_username is not None or self.kafka_sasl_password is not None):
            raise ValueError(
                f"{p}SASL_USERNAME/PASSWORD are set but {p}SECURITY_PROTOCOL={protocol} does not use them: "
                "set it to SASL_SSL (or SASL_PLAINTEXT)"
            )
        ssl_files = [
            name
            for name in (
                "kafka_ssl_ca_file",
                "kafka_ssl_cert_file",
                "kafka_ssl_key_file",
                "kafka_ssl_key_password",
            )
            if getattr(self, name) is not None
        ]
        if ssl_files and not tls:
            raise ValueError(
                f"{', '.join(ENV_PREFIX + n.upper() for n in ssl_files)} set but {p}SECURITY_PROTOCOL={protocol} "
                "does not use TLS: set it to SSL or SASL_SSL"
            )
        if (self.kafka_ssl_cert_file is None) != (self.kafka_ssl_key_file is None):
            raise ValueError(f"{p}SSL_CERT_FILE and {p}SSL_KEY_FILE go together: set both or neither")
        if self.kafka_ssl_key_password is not None and self.kafka_ssl_key_file is None:
            raise ValueError(f"{p}SSL_KEY_PASSWORD is set without {p}SSL_KEY_FILE")
        return self

    _model_dir_follows_data_dir: bool = PrivateAttr(False)
    _from_model_defaults: frozenset[str] = PrivateAttr(frozenset())

    @model_validator(mode="after")
    def _fill_model_defaults(self) -> Settings:
        unset = frozenset(name for name in MODEL_DEFAULTS[self.model] if getattr(self, name) is None)
        for name in unset:
            setattr(self, name, MODEL_DEFAULTS[self.model][name])
        self._from_model_defaults = unset
        return self

    def for_model(self, model: str) -> Settings:
        """A copy that trains ``model``: hyper-parameters that were not set take ``model``'s defaults."""
        if model not in MODEL_DEFAULTS:
            raise ValueError(f"unknown model {model!r}; known: {', '.join(MODEL_DEFAULTS)}")
        defaults = {name: MODEL_DEFAULTS[model][name] for name in self._from_model_defaults}
        return self.model_copy(update={"model": model, **defaults})

    @model_validator(mode="after")
    def _default_model_dir(self) -> Settings:
        if self.model_dir is None:
            self.model_dir = self.data_dir / "models"
            self._model_dir_follows_data_dir = True
        return self

    @property
    def kafka_heartbeat_interval_ms(self) -> int:
        """How often a group member heartbeats: Kafka's 3 s, or a third of a shorter session timeout.
        It is also how soon a member learns that its group rebalances."""
        return min(3000, self.kafka_session_timeout_ms // 3)

    def with_data_dir(self, data_dir: Path) -> Settings:
        """A copy rooted at another data dir; the model dir moves too unless it was set explicitly."""
        update: dict[str, Path] = {"data_dir": data_dir}
        if self._model_dir_follows_data_dir:
            update["model_dir"] = data_dir / "models"
        return self.model_copy(update=update)

    def require_servers(self) -> tuple[str, str]:
        """Return (kafka_bootstrap, redis_url) or raise ConfigError naming what is missing."""
        missing = [
            name
            for name, value in (
                ("STREAMREC_KAFKA_BOOTSTRAP", self.kafka_bootstrap),
                ("STREAMREC_REDIS_URL", self.redis_url),
            )
            if value is None
        ]
        if missing:
            raise ConfigError(
                f"{' and '.join(missing)} not set: point them at your servers, "
                "or use `streamrec dev` to start embedded ones"
            )
        assert self.kafka_bootstrap is not None and self.redis_url is not None
        return self.kafka_bootstrap, self.redis_url

    def as_env(self) -> dict[str, str]:
        """The settings as ``STREAMREC_*`` variables, to hand to a child process."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            # Model defaults stay unset so that the child resolves them for its own model.
            if value is None or (
                name in self._from_model_defaults and value == MODEL_DEFAULTS[self.model][name]
            ):
                continue
            # A SecretStr prints as "**********": the child needs the secret itself.
            text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            env[f"{ENV_PREFIX}{name.upper()}"] = text
        return env


class ConfigError(Exception):
    """A configuration problem, reported to the user as one clear line."""


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, turning validation errors into one-line ConfigErrors."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            # A check across settings (no loc) names its variables in its message.
            f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            if err["loc"]
            else err["msg"].removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


def configuration_markdown() -> str:
    """The settings as a Markdown table (``docs/configuration.md`` is generated from this)."""
    lines = [
        "# Configuration",
        "",
        "Every setting is an environment variable, read by every service, the CLI and the embedded",
        "stack alike (the same names in docker-compose). Generated from `shared/settings.py` by",
        "`python -m streamrec.shared.settings > docs/configuration.md`.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        if name in MODEL_DEFAULTS["mf"]:
            default = ", ".join(f"{model}: `{values[name]}`" for model, values in MODEL_DEFAULTS.items())
        else:
            default = "unset" if field.default is None else f"`{field.default}`"
        lines.append(f"| `{ENV_PREFIX}{name.upper()}` | {default} | {field.description or ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(configuration_markdown(), end="")
