"""The forget requests the HTTP API (``DELETE /users/{user_id}``) and the CLI send to ingest.

A :class:`~streamrec.shared.messages.ForgetUser` goes to every partition of the control topic;
``streamrec.erasure`` (``forget_user``, ``streamrec users forget``) explains why and sends it with
this same producer.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from streamrec.shared.events import resolve_user_id
from streamrec.shared.kafka_config import PublishError, client_config
from streamrec.shared.messages import ForgetUser
from streamrec.shared.settings import Settings, load_settings


class ForgetRequests:
    """A Kafka producer of forget requests, connected at the first :meth:`send` (thread-safe)."""

    def __init__(self, settings: Settings | None = None, *, timeout: float = 30.0) -> None:
        self.settings = settings or load_settings()
        self.topic = self.settings.topic_control
        self.timeout = timeout
        self._producer: Any = None
        self._lock = threading.Lock()

    def send(self, user_id: str | int) -> ForgetUser:
        """Validate ``user_id`` like ingest does and send its forget request to every partition
        of the control topic; returns the request once Kafka acknowledged it.

        Raises ValueError for an id that can never be a user's, PublishError if Kafka did not
        take the request (unreachable, topic missing)."""
        request = ForgetUser(resolve_user_id(user_id), requested_at=time.time())
        with self._lock:
            producer = self._connect()
            from confluent_kafka import KafkaException

            try:  # all topics, not this one: asking for one topic lets some brokers auto-create it
                metadata = producer.list_topics(timeout=self.timeout).topics.get(self.topic)
            except KafkaException as exc:
                raise PublishError(
                    f"Kafka at {self.settings.kafka_bootstrap} is unreachable ({exc.args[0].str()})"
                ) from None
            if metadata is None or metadata.error is not None or not metadata.partitions:
                raise PublishError(
                    f"topic {self.topic!r} does not exist on {self.settings.kafka_bootstrap}: "
                    "run `streamrec topics create`"
                )
            failures: list[str] = []

            def on_delivery(error: Any, _message: Any) -> None:
                if error is not None:
                    failures.append(str(error))

            value = request.to_json()
            for partition in sorted(metadata.partitions):
                producer.produce(
                    self.topic, key=request.user_id, value=value, partition=partition, on_delivery=on_delivery
                )
            remaining = producer.flush(self.timeout)
        if remaining or failures:
            reason = failures[0] if failures else f"not acknowledged after {self.timeout:.0f}s"
            raise PublishError(
                f"the forget request was not taken by Kafka at {self.settings.kafka_bootstrap} ({reason})"
            )
        return request

    def _connect(self) -> Any:
        if self._producer is None:
            from confluent_kafka import Producer

            if not self.settings.kafka_bootstrap:
                raise PublishError("no Kafka to send to: set STREAMREC_KAFKA_BOOTSTRAP")
            self._producer = Producer(
                client_config(
                    self.settings,
                    {
                        "acks": "all",
                        "message.timeout.ms": int(self.timeout * 1000),
                        "log.connection.close": False,
                    },
                )
            )
        return self._producer

    def close(self) -> None:
        """Release the Kafka client (every send was flushed already)."""
        self._producer = None
