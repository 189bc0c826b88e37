"""Where an event is folded: the home rule, and the re-key topic for events not at home.

A Faust table keeps a user on the partition of the events that changed it, so all of one user's
events must be folded on one partition. An input message keyed by its event's user id (the key's
UTF-8 bytes equal the normalised ``user_id``) is already there, whatever partitioner the producer
used, as long as it keys every event of that user the same way: ingest folds it where it lies,
with no extra hop (:func:`is_home`). Every other valid event (no key, or a key that is not the
user id) is re-published once to ``streamrec-ingest-rekeyed``, keyed by user id, on
:func:`partition_for` the user id (the murmur2 hash of Kafka's Java client, of aiokafka and of
streamrec's publisher), and folded there.

Edge case: a producer that keys some of a user's events and not others must use that same
murmur2 partitioner for the keyed ones (librdkafka clients: ``partitioner=murmur2_random``), or
the user's state splits across two partitions. Changing the input's partition count moves keyed
users too, as in any Kafka application.
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2

from streamrec.shared.events import Interaction


def partition_for(user_id: str, partitions: int) -> int:
    """The home partition of a re-keyed user: Kafka's default partitioner on the UTF-8 id."""
    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


def is_home(key: bytes | None, event: Interaction) -> bool:
    """True if an input message is keyed by its event's user id, so its partition is the user's."""
    return key is not None and key == event.user_id.encode()
