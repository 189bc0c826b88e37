"""The ``streamrec`` command line.

Run the whole thing:      streamrec demo | streamrec dev
Run one service:          streamrec ingest | trainer | scorer | api
Work with data:           streamrec publish FILE | replay PATH | train --once | recommend USER_ID
                          | similar ITEM_ID
Configuration comes from ``STREAMREC_*`` environment variables (see docs/configuration.md).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson

from streamrec.shared.logs import configure_logging
from streamrec.shared.redaction import redacted_url
from streamrec.shared.settings import ConfigError, Settings, load_settings


class UserError(Exception):
    """An error to show as one line, without a traceback."""


def _known_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "something is wrong with the input or environment", not a bug."""
    from confluent_kafka import KafkaException
    from redis.exceptions import RedisError

    from streamrec.processes import StackError
    from streamrec.publisher import InvalidEvent
    from streamrec.shared.datasets import DatasetError
    from streamrec.shared.kafka_config import PublishError
    from streamrec.shared.topic_admin import KafkaUnavailable

    errors: list[type[BaseException]] = [
        UserError,
        ConfigError,
        DatasetError,
        InvalidEvent,
        PublishError,
        KafkaUnavailable,
        KafkaException,
        RedisError,
        StackError,
    ]
    try:
        from streamrec.shared.registry import ModelIntegrityError, RegistryError

        errors += [ModelIntegrityError, RegistryError]
    except ImportError:
        pass
    return tuple(errors)


class StreamrecGroup(click.Group):
    """Turns known errors into ``streamrec: error: …`` and exit code 1 (2 for configuration)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if not isinstance(exc, _known_errors()):
                raise
            _fail(_describe(exc), code=2 if isinstance(exc, ConfigError) else 1)


def _describe(exc: BaseException) -> str:
    from redis.exceptions import AuthenticationError, ConnectionError, TimeoutError

    from streamrec.shared.redis_connection import is_permanent

    if is_permanent(exc):  # already one line naming the user and server
        return str(exc)
    if isinstance(exc, AuthenticationError):
        return f"Redis refused the credentials ({exc}): check STREAMREC_REDIS_URL"
    if isinstance(exc, ConnectionError | TimeoutError):
        return f"Redis is unreachable ({exc}): check STREAMREC_REDIS_URL and that Redis runs"
    return str(exc)


def _fail(message: str, code: int = 1) -> NoReturn:
    from streamrec.shared.gc_pauses import stop_watching_gc_pauses

    stop_watching_gc_pauses()  # the error is the last line the process prints
    click.echo(f"streamrec: error: {message}", err=True)
    sys.exit(code)


def _settings(service: str, **overrides: Any) -> Settings:
    settings = load_settings(**overrides)
    configure_logging(service, settings.log_level, settings.log_format)
    return settings


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so `finally` blocks stop children cleanly."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@click.group(cls=StreamrecGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streamrec")
def cli() -> None:
    """streamrec: streaming, real-time recommendations (Kafka -> Faust -> ONNX -> Redis)."""


# ------------------------------------------------------------------------------------------------
# The whole stack
# ------------------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--services",
    default="ingest,scorer,trainer,api",
    show_default=True,
    help="Comma-separated services to run.",
)
@click.option(
    "--ingest-workers", default=1, show_default=True, type=click.IntRange(1), help="Ingest instances."
)
@click.option("--scorers", default=1, show_default=True, type=click.IntRange(1), help="Scorer instances.")
def dev(services: str, ingest_workers: int, scorers: int) -> None:
    """Run the stack until Ctrl-C: embedded broker/Redis for unset URLs, plus the services."""
    from streamrec.stack import Stack, new_run_dir, settings_for_run

    settings = _settings("dev", log_format="console")
    run_dir = new_run_dir(settings.data_dir)
    _exit_on_sigterm()
    stack = Stack(
        settings_for_run(settings, run_dir),
        run_dir,
        [s.strip() for s in services.split(",")],
        replicas={"ingest": ingest_workers, "scorer": scorers},
    )
    try:
        stack.start()
        env_file = run_dir / "streamrec.env"
        env_file.write_text(dev_env_file(stack.settings, _ops_endpoints(stack)))
        click.echo(f"streamrec is running; logs in {run_dir}/")
        click.echo(f"  Kafka:  {stack.settings.kafka_bootstrap}   topic {stack.settings.topic_interactions}")
        click.echo(f"  Redis:  {redacted_url(stack.settings.redis_url)}")
        if "api" in stack.services:
            click.echo(f"  HTTP:   http://{stack.settings.api_host}:{stack.settings.api_port}")
        for name, port in stack.ops_ports.items():
            click.echo(f"  {name}: http://127.0.0.1:{port}/metrics  (/healthz, /readyz)")
        click.echo(f"In another shell: source {env_file}; streamrec replay PATH; streamrec recommend USER")
        click.echo("Ctrl-C stops everything.")
        while True:
            stack.supervise()
            time.sleep(1)
    except KeyboardInterrupt:
        click.echo("stopping…")
    finally:
        stack.stop()


def _ops_endpoints(stack: Any) -> dict[str, str]:
    """Each running service's ops endpoint (the api serves /readyz on its own port)."""
    endpoints = {name: f"http://127.0.0.1:{port}" for name, port in stack.ops_ports.items()}
    if "api" in stack.services:
        endpoints["api"] = f"http://{stack.settings.api_host}:{stack.settings.api_port}"
    return endpoints


def dev_env_file(settings: Settings, endpoints: dict[str, str] | None = None) -> str:
    """``streamrec.env`` of a dev run: the servers to point another shell at, without passwords.

    The embedded Redis has no password, so its URL is written as is. A Redis URL with a password
    was configured by the user, who has it already (STREAMREC_REDIS_URL in their environment):
    it is neither printed nor written to a file in the run folder, where it would outlive the run
    and travel with logs that get shared.
    """
    lines = [
        f"export STREAMREC_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}",
        # The run's state: `streamrec train --once` publishes to the registry the scorer serves
        # from, and `streamrec models ...` shows and changes that one.
        f"export STREAMREC_DATA_DIR={settings.data_dir}",
        f"export STREAMREC_MODEL_DIR={settings.model_dir}",
    ]
    if endpoints:
        lines.append(
            f"export STREAMREC_STATUS_ENDPOINTS={','.join(f'{k}={v}' for k, v in endpoints.items())}"
        )
    if settings.redis_prefix != Settings.model_fields["redis_prefix"].default:
        lines.append(f"export STREAMREC_REDIS_PREFIX={settings.redis_prefix}")  # the keys the services write
    url = settings.redis_url
    if url is not None and redacted_url(url) == url:
        lines.append(f"export STREAMREC_REDIS_URL={url}")
    elif url is not None:
        lines.append(
            f"# STREAMREC_REDIS_URL={redacted_url(url)}: holds a password, so not written here; "
            "use the STREAMREC_REDIS_URL you configured"
        )
    return "\n".join(lines) + "\n"


@cli.command()
@click.option(
    "--movielens",
    type=click.Path(dir_okay=False, path_type=Path),  # a missing file: one clear line from the reader
    help="Replay this MovieLens file (ratings.csv or u.data) instead of synthetic data.",
)
@click.option("--users", default=300, show_default=True, help="Synthetic users.")
@click.option("--items", default=300, show_default=True, help="Synthetic items.")
@click.option("--limit", type=int, help="Replay only the first N events (time order).")
@click.option("--speed", default=0.0, show_default=True, help="Time scale of the replay; 0 = fast.")
@click.option("--samples", default=3, show_default=True, help="Users whose recommendations are printed.")
def demo(
    movielens: Path | None, users: int, items: int, limit: int | None, speed: float, samples: int
) -> None:
    """The main job: embedded stack + a replayed stream + training + live recommendations."""
    from streamrec.demo import run_demo

    settings = _settings("demo", log_format="console", log_level="WARNING")
    _exit_on_sigterm()
    run_demo(
        settings, movielens=movielens, users=users, items=items, limit=limit, speed=speed, samples=samples
    )


# ------------------------------------------------------------------------------------------------
# One service each
# ------------------------------------------------------------------------------------------------


@cli.command()
def ingest() -> None:
    """Run the ingest worker (Faust): validate events, build features."""
    from streamrec.ingest.worker import run

    run(_settings("ingest"))


@cli.command()
def scorer() -> None:
    """Run the scorer: keep every active user's top-N fresh in Redis."""
    from streamrec.scorer.service import run

    run(_settings("scorer"))


@cli.command()
def trainer() -> None:
    """Run the trainer continuously: retrain on schedule, publish models."""
    run_trainer(_settings("trainer"))


def run_trainer(settings: Settings) -> None:
    """The trainer service, until SIGINT/SIGTERM."""
    from streamrec.trainer.service import run

    run(settings)


@cli.command()
def api() -> None:
    """Run the read-only HTTP API."""
    from streamrec.api.app import run

    run(_settings("api"))


@cli.command()
@click.option("--once", is_flag=True, help="Train one model now and exit.")
@click.option(
    "--no-wait",
    is_flag=True,
    help="With --once: train on what ingest has taken so far, without waiting for it to catch up.",
)
@click.option("--json", "as_json", is_flag=True, help="With --once: print the outcome as one JSON object.")
def train(once: bool, no_wait: bool, as_json: bool) -> None:
    """Train on the streamed interactions (``--once``: one model now; otherwise same as ``trainer``).

    ``--once`` first waits, with a progress bar, until ingest has taken every event published
    before the command started, so the model sees them all. With a trainer service running on
    this data dir, that trainer trains it (its next cycle, at once) and the command follows its
    progress: never a second training beside it. Otherwise the command trains here.
    """
    if not once:
        run_trainer(_settings("trainer"))
        return
    from streamrec.backlog import IngestStalled
    from streamrec.train_now import TrainingFailed, summary, train_now

    settings = _settings("train", log_format="console", log_level="WARNING")
    try:
        outcome = train_now(settings, wait=not no_wait)
    except (IngestStalled, TrainingFailed, ValueError) as exc:  # ValueError: too little data
        raise UserError(str(exc)) from None
    click.echo(orjson.dumps(outcome.to_dict()).decode() if as_json else summary(outcome, settings))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(as_json: bool) -> None:
    """Show the stack's state: services' readiness, lags in events, served model, lists in Redis."""
    from streamrec.status import collect, render

    result = collect(_settings("status", log_format="console", log_level="WARNING"))
    click.echo(
        orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode() if as_json else render(result)
    )


@cli.group()
def models() -> None:
    """The model registry: list, inspect, promote, roll back (STREAMREC_MODEL_DIR)."""


def _registry(settings: Settings):
    from streamrec.shared.registry import ModelRegistry

    return ModelRegistry(settings.model_dir)  # type: ignore[arg-type]  # set by Settings' validator


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per version instead of a table.")
def models_list(as_json: bool) -> None:
    """Every version, oldest first; ``*`` marks the one served (PROMOTED)."""
    settings = _settings("models", log_format="console")
    registry = _registry(settings)
    promoted = registry.promoted_version()
    rows = []
    for version in registry.versions():
        manifest = registry.manifest(version)
        rows.append(
            {
                "version": version,
                "served": version == promoted,
                "status": manifest.status,
                "model": manifest.model_type,
                "created_at": manifest.created_at,
                "events": manifest.data.get("events"),
                "val_ndcg@10": manifest.metrics.get("val_ndcg@10"),
                "reason": manifest.status_reason,
            }
        )
    if as_json:
        for row in rows:
            click.echo(orjson.dumps(row).decode())
        return
    if not rows:
        click.echo(f"no model in {settings.model_dir}")
        return
    for row in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["created_at"]))
        ndcg = "-" if row["val_ndcg@10"] is None else f"{row['val_ndcg@10']:.4f}"
        click.echo(
            f"{'*' if row['served'] else ' '} {row['version']}  {row['status']:<11}  {row['model']:<6}  "
            f"{created}  events={row['events']}  val_ndcg@10={ndcg}  {row['reason']}"
        )


@models.command("show")
@click.argument("version")
def models_show(version: str) -> None:
    """A version's manifest (JSON), after checking its files against it."""
    from streamrec.shared.registry import ModelIntegrityError

    registry = _registry(_settings("models", log_format="console"))
    try:
        manifest = registry.verify(version)
        intact = "files verified"
    except ModelIntegrityError as exc:
        manifest, intact = registry.manifest(version), f"NOT INTACT: {exc}"
    click.echo(manifest.to_json().decode().rstrip())
    click.echo(f"# {intact}; {'served now' if registry.promoted_version() == version else 'not served'}")


@models.command("promote")
@click.argument("version")
@click.option("--reason", default="promoted by hand", show_default=True, help="Recorded with the promotion.")
def models_promote(version: str, reason: str) -> None:
    """Serve VERSION (verified first), bypassing the quality gate; scorers switch to it."""
    settings = _settings("models", log_format="console")
    manifest = _registry(settings).promote(version, reason)
    _announce_or_explain(settings, manifest)
    click.echo(f"promoted {version}")


@models.command("rollback")
@click.option(
    "--reason", default="rolled back by hand", show_default=True, help="Recorded with the rollback."
)
def models_rollback(reason: str) -> None:
    """Serve the previously promoted version again; the current one is marked rolled-back."""
    settings = _settings("models", log_format="console")
    previous, manifest = _registry(settings).rollback(reason)
    _announce_or_explain(settings, manifest)
    click.echo(f"rolled back from {previous} to {manifest.version}")


@models.command("prune")
@click.option("--keep", type=click.IntRange(min=1), required=True, help="Newest versions to keep.")
def models_prune(keep: int) -> None:
    """Delete all but the KEEP newest versions now (never the served one nor its rollback target)."""
    settings = _settings("models", log_format="console")
    deleted = _registry(settings).prune(keep)
    click.echo(f"deleted {len(deleted)} versions{': ' + ', '.join(deleted) if deleted else ''}")


def _announce_or_explain(settings: Settings, manifest: Any) -> None:
    """Tell scorers at once over Kafka; without Kafka they see PROMOTED change within seconds."""
    from streamrec.trainer.service import announce

    if settings.kafka_bootstrap is None:
        click.echo(
            "STREAMREC_KAFKA_BOOTSTRAP not set: scorers pick the change up from the registry within ~10 s"
        )
        return
    announce(settings, manifest)


@cli.group()
def users() -> None:
    """Users: erase one (STREAMREC_KAFKA_BOOTSTRAP)."""


@users.command("forget")
@click.argument("user_id")
def users_forget(user_id: str) -> None:
    """Erase USER_ID everywhere: ingest state, trainer log, Redis, scorer memory (README, "Erasing a user")."""
    from streamrec.erasure import forget_user

    settings = _settings("users", log_format="console")
    if settings.kafka_bootstrap is None:
        raise ConfigError(
            "STREAMREC_KAFKA_BOOTSTRAP is not set: point it at your Kafka (see `streamrec dev`)"
        )
    try:
        request = forget_user(user_id, settings)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    click.echo(f"forget request for user {request.user_id!r} sent to {settings.topic_control}")


@cli.group()
def topics() -> None:
    """Kafka topic administration."""


@topics.command("create")
def topics_create() -> None:
    """Create streamrec's topics on STREAMREC_KAFKA_BOOTSTRAP (existing ones are kept)."""
    from streamrec.shared.topic_admin import create_topics

    created = create_topics(_settings("topics"))
    click.echo(f"created: {', '.join(created)}" if created else "all topics exist")


# ------------------------------------------------------------------------------------------------
# Data in, recommendations out
# ------------------------------------------------------------------------------------------------


def _publisher(settings: Settings):
    from streamrec.publisher import Publisher

    if settings.kafka_bootstrap is None:
        raise ConfigError(
            "STREAMREC_KAFKA_BOOTSTRAP is not set: point it at your Kafka (see `streamrec dev`)"
        )
    return Publisher(settings=settings)


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def publish(path: Path) -> None:
    """Publish events from a JSONL or CSV file (validated first; a bad line publishes nothing)."""
    from streamrec.publisher import publish_stream, read_event_file

    settings = _settings("publish", log_format="console")
    events = read_event_file(path)
    sent = publish_stream(_publisher(settings), events, len(events))
    click.echo(f"published {sent} events to {settings.topic_interactions}")


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--speed", default=0.0, show_default=True, help="Time scale; 0 = as fast as possible.")
@click.option("--limit", type=int, help="Only the first N events (time order).")
def replay(path: Path, speed: float, limit: int | None) -> None:
    """Replay a MovieLens ratings.csv / u.data (or generic CSV) in timestamp order."""
    from streamrec.publisher import replay_file

    settings = _settings("replay", log_format="console")
    sent = replay_file(_publisher(settings), path, speed=speed, limit=limit)
    click.echo(f"replayed {sent} events from {path} to {settings.topic_interactions}")


@cli.group()
def items() -> None:
    """The item catalog: hidden items, categories, expiry (topic STREAMREC_TOPIC_ITEMS)."""


@items.command("publish")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def items_publish(path: Path) -> None:
    """Publish catalog entries from a JSONL file, one item per line (validated first; a bad line
    publishes nothing): {"item_id": "sku-9", "hidden": false, "categories": ["shoes"], "expires_at": …}."""
    from streamrec.publisher import read_item_file

    settings = _settings("publish", log_format="console")
    entries = read_item_file(path)
    with _publisher(settings) as publisher:
        for entry in entries:
            publisher.publish_item(entry)
    click.echo(f"published {len(entries)} items to {settings.topic_items}")


@cli.command()
@click.argument("user_id")
@click.option("--n", "n", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--category", "categories", multiple=True, help="Only items of this category (repeatable: any of them)."
)
@click.option("--exclude", multiple=True, help="Never this item (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def recommend(
    user_id: str, n: int, categories: tuple[str, ...], exclude: tuple[str, ...], as_json: bool
) -> None:
    """Print a user's recommendations (one Redis lookup; popular items for unknown users)."""
    from streamrec.client import RecommendationClient
    from streamrec.shared.redis_connection import redis_url

    settings = _settings("recommend", log_format="console")
    redis_url(settings)  # a ConfigError saying how to set it, if unset
    with RecommendationClient(settings=settings) as client:
        try:
            recs = client.get(user_id, n=n, categories=categories, exclude=exclude)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    if recs is None:
        raise UserError(f"no recommendations for {user_id!r} and no popular fallback yet in Redis")
    if as_json:
        click.echo(orjson.dumps(recs.to_dict()).decode())
        return
    click.echo(f"user {user_id}: {recs.source}, model {recs.model_version or '-'}")
    for rank, (item, score) in enumerate(recs.items, 1):
        click.echo(f"{rank:>4}. {item:<24} {score:.4f}")


@cli.command()
@click.argument("item_id")
@click.option("--n", "n", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--category", "categories", multiple=True, help="Only items of this category (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def similar(item_id: str, n: int, categories: tuple[str, ...], as_json: bool) -> None:
    """Print an item's similar items (the served model's nearest items; popular ones as fallback)."""
    from streamrec.client import RecommendationClient
    from streamrec.shared.redis_connection import redis_url

    settings = _settings("similar", log_format="console")
    redis_url(settings)  # a ConfigError saying how to set it, if unset
    with RecommendationClient(settings=settings) as client:
        found = client.similar(item_id, n=n, categories=list(categories) or None)
    if found is None:
        raise UserError(f"no similar items for {item_id!r} and no popular fallback yet in Redis")
    if as_json:
        click.echo(orjson.dumps(found.to_dict()).decode())
        return
    click.echo(f"item {found.item_id}: {found.source}, model {found.model_version or '-'}")
    for rank, (item, score) in enumerate(found.items, 1):
        click.echo(f"{rank:>4}. {item:<24} {score:.4f}")


@cli.command()
@click.option(
    "--dataset",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),  # a missing file: one clear line from the reader
    help="MovieLens ratings.csv / u.data, or a CSV with user_id,item_id,timestamp.",
)
@click.option("--models", help="Comma-separated models (default: all, e.g. mostpop,itemknn,ease,mf,sasrec).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG chart here.")
@click.option(
    "--task",
    type=click.Choice(["ranking", "rating"]),
    default="ranking",
    show_default=True,
    help="ranking: top-N, temporal leave-last-out; rating: the seed's 80/20 rating prediction (RMSE, MAE).",
)
@click.option(
    "--popularity-penalties",
    help="Comma-separated STREAMREC_SCORER_POPULARITY_PENALTY values (e.g. 0,0.25,0.5,1): adds the "
    "knob's NDCG/coverage trade-off per model (ranking task).",
)
def evaluate(
    dataset: Path,
    models: str | None,
    as_json: bool,
    plot: Path | None,
    task: str,
    popularity_penalties: str | None = None,
) -> None:
    """Offline evaluation (docs/evaluation.md): ranking (temporal leave-last-out, full ranking), or
    rating prediction on the seed's random 80/20 split against scikit-surprise's SVD."""
    from streamrec.trainer.evaluation.report import format_table
    from streamrec.trainer.evaluation.runner import EvaluationError
    from streamrec.trainer.evaluation.runner import evaluate as run_evaluation

    # Progress (model, epoch, validation metric) as readable lines on stderr; results on stdout.
    settings = _settings("evaluate", log_format="console")
    if task == "rating":
        from streamrec.trainer.evaluation.rating import evaluate_ratings, format_rating_table, plot_ratings

        try:
            rating = evaluate_ratings(dataset, settings)
        except (ValueError, RuntimeError) as exc:  # no ratings in the file, no scikit-surprise
            raise UserError(str(exc)) from None
        if plot is not None:
            plot_ratings([rating], plot)
        click.echo(orjson.dumps(rating).decode() if as_json else format_rating_table(rating))
        return
    names = [name.strip() for name in models.split(",")] if models else None
    try:
        penalties = (
            [float(value) for value in popularity_penalties.split(",")] if popularity_penalties else None
        )
    except ValueError:
        raise UserError(f"--popularity-penalties: not a list of numbers: {popularity_penalties!r}") from None
    try:
        result = run_evaluation(dataset, names, settings, plot, penalties)
    except EvaluationError as exc:
        raise UserError(str(exc)) from None
    click.echo(orjson.dumps(result).decode() if as_json else format_table(result))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="streamrec")
