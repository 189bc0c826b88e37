"""Erasing a user: send the forget request that ingest, the scorer and the trainer act on.

::

    from streamrec.erasure import forget_user

    forget_user("42")   # returns once Kafka acknowledged the request

The request (``ForgetUser`` in ``streamrec.shared.messages``) goes to every partition of the
control topic, keyed by the user id: a user keyed by a producer with another partitioner than
murmur2 lives on another partition than its home, so each partition's ingest looks for the user.
There ingest deletes the user's state, drops the user's late events, and tells the scorer and the
trainer on that partition of the user-features topic (docs/architecture.md, "Erasing a user").
``streamrec users forget`` and ``DELETE /users/{user_id}`` of the HTTP API send it the same way.
"""

from __future__ import annotations

from streamrec.api.forget_requests import ForgetRequests
from streamrec.shared.messages import ForgetUser
from streamrec.shared.settings import Settings

__all__ = ["ForgetRequests", "forget_user"]


def forget_user(user_id: str | int, settings: Settings | None = None) -> ForgetUser:
    """Erase every trace of ``user_id`` (see the module docstring); returns the request sent."""
    requests = ForgetRequests(settings)
    try:
        return requests.send(user_id)
    finally:
        requests.close()
