"""``streamrec status``: the state of the stack the settings point at, read from the stack itself.

- each service's readiness, from its ``/readyz`` (the endpoints in ``STREAMREC_STATUS_ENDPOINTS``,
  which ``streamrec dev`` writes to its env file);
- how many events ingest, the scorer and the trainer are behind their inputs: ingest from its
  consumer group's commits on the input and re-key topics; the scorer and the trainer from their
  groups' commits on the user features, counting the events in the messages they have not taken;
- the served model (the registry's PROMOTED) and its age;
- the recommendation lists in Redis.

A part that cannot be read is reported as such; the others are still shown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from confluent_kafka import KafkaException

from streamrec.backlog import Offsets, ingest_behind
from streamrec.shared.kafka_topics import SCORER_GROUP, TRAINER_GROUP
from streamrec.shared.messages import feature_batch_event_count
from streamrec.shared.redis_connection import connect
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.registry import ModelRegistry
from streamrec.shared.settings import Settings

READY_TIMEOUT_SECONDS = 2.0
LIST_SCAN_LIMIT = 1_000_000  # lists counted at most (a SCAN over a huge keyspace would take long)


@dataclass
class ServiceState:
    """One service's answer to ``/readyz``."""

    name: str
    url: str
    ready: bool
    detail: str  # "ok", the service's reason, or why it could not be asked


@dataclass
class StackStatus:
    """Everything ``streamrec status`` shows; ``None`` where a part could not be read (see ``problems``)."""

    services: list[ServiceState] = field(default_factory=list)
    ingest_behind: int | None = None  # events
    scorer_behind: int | None = None
    trainer_behind: int | None = None
    model_version: str | None = None
    model_age_seconds: float | None = None
    lists: int | None = None
    lists_capped: bool = False
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``--json``)."""
        return {
            "services": [vars(service) for service in self.services],
            "behind_events": {
                "ingest": self.ingest_behind,
                "scorer": self.scorer_behind,
                "trainer": self.trainer_behind,
            },
            "model": {"version": self.model_version, "age_seconds": self.model_age_seconds},
            "lists": self.lists,
            "lists_capped": self.lists_capped,
            "problems": self.problems,
        }


def parse_endpoints(value: str) -> dict[str, str]:
    """``"ingest=http://h:1,scorer=http://h:2"`` -> {name: base URL}; raises ValueError if malformed."""
    endpoints: dict[str, str] = {}
    for pair in filter(None, (part.strip() for part in value.split(","))):
        name, sep, url = pair.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise ValueError(f"STREAMREC_STATUS_ENDPOINTS: {pair!r} is not name=http://host:port")
        endpoints[name.strip()] = url.strip().rstrip("/")
    return endpoints


def service_states(endpoints: dict[str, str]) -> list[ServiceState]:
    """Ask every service's ``/readyz``."""
    states = []
    with httpx.Client(timeout=READY_TIMEOUT_SECONDS) as client:
        for name, url in endpoints.items():
            try:
                response = client.get(f"{url}/readyz")
                states.append(ServiceState(name, url, response.status_code == 200, response.text.strip()))
            except httpx.HTTPError as exc:
                states.append(ServiceState(name, url, False, f"unreachable: {exc.__class__.__name__}"))
    return states


def features_behind(offsets: Offsets, topic: str, group_offsets: Offsets) -> int:
    """Events in the user-features messages ``group_offsets``' group has not committed yet."""
    ends = offsets.ends(topic)
    committed = group_offsets.committed(topic, ends)
    return offsets.sum_between(topic, committed, ends, feature_batch_event_count)


def collect(settings: Settings) -> StackStatus:
    """Read every part of the status; a part that fails goes to ``problems``."""
    status = StackStatus()

    def attempt(what: str, read: Callable[[], None]) -> None:
        try:
            read()
        except (KafkaException, OSError, ValueError, RuntimeError) as exc:
            status.problems.append(f"{what}: {exc}")

    def read_services() -> None:
        status.services = service_states(parse_endpoints(settings.status_endpoints))

    attempt("services", read_services)
    if settings.kafka_bootstrap:
        offsets = Offsets(settings)
        try:

            def read_ingest() -> None:
                status.ingest_behind = ingest_behind(offsets, settings)

            def read_group(group: str) -> int:
                group_offsets = Offsets(settings, group)
                try:
                    return features_behind(offsets, settings.topic_user_features, group_offsets)
                finally:
                    group_offsets.close()

            def read_scorer() -> None:
                status.scorer_behind = read_group(SCORER_GROUP)

            def read_trainer() -> None:
                status.trainer_behind = read_group(TRAINER_GROUP)

            attempt("ingest lag", read_ingest)
            attempt("scorer lag", read_scorer)
            attempt("trainer lag", read_trainer)
        finally:
            offsets.close()
    else:
        status.problems.append("lags: STREAMREC_KAFKA_BOOTSTRAP is not set")

    def read_model() -> None:
        registry = ModelRegistry(settings.model_dir)  # type: ignore[arg-type]  # set by Settings
        status.model_version = registry.promoted_version()
        if status.model_version is not None:
            status.model_age_seconds = time.time() - registry.manifest(status.model_version).created_at

    attempt("model", read_model)

    def read_lists() -> None:
        redis = connect(settings, socket_timeout=5.0, connect_timeout=3.0)
        try:
            count = 0
            for _key in redis.scan_iter(match=RedisKeys(settings.redis_prefix).recs("*"), count=10_000):
                count += 1
                if count >= LIST_SCAN_LIMIT:
                    status.lists_capped = True
                    break
            status.lists = count
        finally:
            redis.close()

    if settings.redis_url:
        attempt("lists", read_lists)
    else:
        status.problems.append("lists: STREAMREC_REDIS_URL is not set")
    return status


def render(status: StackStatus) -> str:
    """The status as a few aligned lines."""

    def number(value: int | None) -> str:
        return "unknown" if value is None else f"{value:,}"

    lines = []
    if status.services:
        lines.append("services:")
        width = max(len(service.name) for service in status.services)
        for service in status.services:
            state = "ready" if service.ready else "NOT READY"
            detail = "" if service.detail == "ok" else f" ({service.detail})"
            lines.append(f"  {service.name:<{width}}  {state}{detail}  {service.url}")
    else:
        lines.append("services: none known (set STREAMREC_STATUS_ENDPOINTS; `streamrec dev` writes it)")
    lines.append(
        "behind, in events: "
        f"ingest {number(status.ingest_behind)}, scorer {number(status.scorer_behind)}, "
        f"trainer {number(status.trainer_behind)}"
    )
    if status.model_version is None:
        lines.append("served model: none yet (popular items are served)")
    else:
        age = status.model_age_seconds or 0.0
        lines.append(f"served model: {status.model_version}, trained {_duration(age)} ago")
    capped = "at least " if status.lists_capped else ""
    lines.append(f"lists in Redis: {capped}{number(status.lists)}")
    lines.extend(f"could not read {problem}" for problem in status.problems)
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
