"""``streamrec demo``: the whole system on embedded defaults, start to finish.

1. start the stack (embedded broker + Redis unless URLs are set; ingest, scorer, api);
2. stream interactions into Kafka (synthetic by default, or a MovieLens file);
3. wait until ingest has taken every event (its committed offsets, as ``streamrec status`` reads
   them), then run one training cycle;
4. wait until the scorer has written every user's recommendations from the new model;
5. print a few users' recent items and recommendations, and stop everything.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
import pandas as pd

from streamrec.backlog import IngestStalled, wait_for_ingest
from streamrec.client import RecommendationClient
from streamrec.processes import StackError, free_port
from streamrec.publisher import Publisher, check_dataset_events, dataset_events, publish_stream
from streamrec.shared.cached_list import CachedList
from streamrec.shared.datasets import in_time_order, load_interactions
from streamrec.shared.redaction import redacted_url
from streamrec.shared.redis_connection import SyncRedis, connect, get_many
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.settings import Settings
from streamrec.stack import Stack, new_run_dir, settings_for_run
from streamrec.synthetic import generate

WAIT_SECONDS = 600.0


def run_demo(
    settings: Settings,
    *,
    movielens: Path | None = None,
    users: int = 300,
    items: int = 300,
    limit: int | None = None,
    speed: float = 0.0,
    samples: int = 3,
) -> None:
    """Run the demo; raises StackError (with the log to look at) if a stage does not finish."""
    from streamrec.trainer.service import train_once

    frame = load_interactions(movielens) if movielens else generate(users=users, items=items)
    if limit is not None:
        frame = in_time_order(frame).head(limit)
    if movielens:  # refuse a bad row now, not after the stack started and half the file was sent
        check_dataset_events(frame, movielens, max_future_seconds=settings.max_future_seconds)
    source = movielens.name if movielens else "synthetic"
    if "api_port" not in settings.model_fields_set:
        # Like the embedded servers, the demo's HTTP API takes a free port unless one was asked for.
        settings = settings.model_copy(update={"api_port": free_port()})
    run_dir = new_run_dir(settings.data_dir)
    click.echo(
        f"streamrec demo: {len(frame):,} {source} events, {frame.user_id.nunique():,} users; run folder {run_dir}"
    )

    with Stack(settings_for_run(settings, run_dir), run_dir, ("ingest", "scorer", "api")) as stack:
        live = stack.settings
        click.echo(
            f"[1/4] stack up  Kafka {live.kafka_bootstrap}  Redis {redacted_url(live.redis_url)}  "
            f"HTTP :{live.api_port}"
        )

        click.echo("[2/4] streaming events into Kafka")
        with Publisher(settings=live) as publisher:
            sent = publish_stream(publisher, dataset_events(frame, source), len(frame), speed=speed)
        # What `streamrec status` reads too: ingest's commits against the input's end.
        try:
            wait_for_ingest(live, stall_seconds=WAIT_SECONDS, tick=stack.supervise)
        except IngestStalled as exc:
            raise StackError(f"{exc}; see {stack.run_dir}/ingest.log") from None
        click.echo(f"      ingest has taken all {sent:,} events")

        click.echo("[3/4] training a model on the streamed interactions")
        result = train_once(live)
        manifest = result.manifest
        click.echo(f"      model {manifest.version}: {_metrics(manifest.metrics)}")
        click.echo(f"      quality gate: {manifest.status} ({result.decision.reason})")
        if not result.promoted:
            raise StackError(
                f"the model was not promoted, so nothing new is served: {result.decision.reason}"
            )

        click.echo("[4/4] scorer refreshing every user's recommendations")
        store = connect(live)
        keys = RedisKeys(live.redis_prefix)
        user_ids = sorted(frame.user_id.unique())

        def served() -> int:
            return _users_served(store, keys, user_ids, manifest.version)

        _wait(
            stack,
            lambda: served() == len(user_ids),
            lambda: f"users with recommendations {served():,}/{len(user_ids):,}",
            "scorer",
        )
        _print_samples(frame, RecommendationClient(settings=live), user_ids[:samples])
    click.echo("done: every process stopped.")


def _wait(stack: Stack, done: Callable[[], bool], status: Callable[[], str], stage: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not done():
        stack.supervise()
        if time.monotonic() > deadline:
            raise StackError(
                f"{stage} did not finish in {WAIT_SECONDS:.0f}s; see {stack.run_dir}/{stage}.log"
            )
        sys.stderr.write(f"\r      {status()}   ")
        sys.stderr.flush()
        time.sleep(0.5)
    sys.stderr.write(f"\r      {status()}   \n")


def _users_served(store: SyncRedis, keys: RedisKeys, user_ids: list[str], version: str) -> int:
    count = 0
    for start in range(0, len(user_ids), 1000):
        for raw in get_many(store, [keys.recs(u) for u in user_ids[start : start + 1000]]):
            if raw is not None and CachedList.decode(raw).model_version == version:
                count += 1
    return count


def _metrics(metrics: dict[str, float]) -> str:
    return (
        f"validation NDCG@10 {metrics['val_ndcg@10']:.3f} (popularity {metrics['popularity_ndcg@10']:.3f}), "
        f"HR@10 {metrics['val_hr@10']:.3f}, {int(metrics['epochs_run'])} epochs in {metrics['train_seconds']:.1f}s"
    )


def _print_samples(frame: pd.DataFrame, client: RecommendationClient, user_ids: list[str]) -> None:
    ordered = in_time_order(frame)
    for user in user_ids:
        recent = ordered[ordered.user_id == user].item_id.tail(5).tolist()
        recs = client.get(user, n=10)
        click.echo(f"\nuser {user}  recent: {' '.join(recent)}")
        if recs is None:
            click.echo("  (no recommendations)")
            continue
        click.echo(f"  {recs.source} recommendations, model {recs.model_version}:")
        click.echo("  " + "  ".join(f"{item} ({score:.2f})" for item, score in recs.items))
