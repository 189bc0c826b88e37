"""The HTTP API's write endpoints' guard: a bearer token (``STREAMREC_API_ADMIN_TOKEN``).

The read endpoints stay open; ``DELETE /users/{user_id}`` needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr

BEARER = "bearer"


def admin_refusal(authorization: str | None, token: SecretStr | None) -> tuple[int, str] | None:
    """None if ``authorization`` (the request's header) carries ``token``; else the status and why.

    503 while no token is configured (the endpoint is off), 401 for a missing or wrong token.
    The comparison takes the same time whatever the header holds (``hmac.compare_digest``).
    """
    if token is None or not token.get_secret_value():
        return 503, "erasure is disabled: set STREAMREC_API_ADMIN_TOKEN to enable the write endpoints"
    scheme, _, given = (authorization or "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != BEARER or not hmac.compare_digest(given.strip().encode(), expected):
        return 401, "a valid admin token is required: Authorization: Bearer <STREAMREC_API_ADMIN_TOKEN>"
    return None
