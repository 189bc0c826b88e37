"""Keeping secrets out of logs and output: every URL streamrec shows goes through :func:`redacted_url`.

A server URL may carry a password (``redis://user:password@host:6379/0``, or ``?password=`` in the
query, which redis-py also accepts). Logs are copied to log stores and terminals are shared, so
the password is replaced by ``***`` wherever a URL is logged, printed or put in an error message.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

MASK = "***"
# Query parameters that carry a secret (redis-py passes unknown query arguments on as keywords).
_SECRET_QUERY_KEYS = frozenset({"password", "pass", "pwd", "secret", "token", "ssl_password"})
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def redacted_url(url: str | None) -> str | None:
    """``url`` with its password (userinfo and query) replaced by ``***``; None stays None.

    The user name, host, port, path and other query arguments are kept: they are what one needs
    to tell which server and account a message is about. Works on malformed URLs too (a password
    containing ``@`` or ``/``), since it must never be the reason a secret gets through.
    """
    if url is None:
        return None
    match = _SCHEME.match(url)
    scheme, rest = (url[: match.end()], url[match.end() :]) if match else ("", url)
    rest, hash_sign, fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    # The userinfo ends at the *last* "@" before the host: a password may contain "@" or "/".
    userinfo, at, hostpart = rest.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        rest = f"{user}:{MASK}@{hostpart}" if colon else f"{user}@{hostpart}"
    if question:
        query = "&".join(_redacted_parameter(parameter) for parameter in query.split("&"))
    return f"{scheme}{rest}{question}{query}{hash_sign}{fragment}"


def _redacted_parameter(parameter: str) -> str:
    key, equals, _value = parameter.partition("=")
    return f"{key}={MASK}" if equals and unquote_plus(key).lower() in _SECRET_QUERY_KEYS else parameter
