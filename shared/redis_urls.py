"""The three kinds of Redis ``STREAMREC_REDIS_URL`` names, parsed: one server, a Redis Cluster, a
Sentinel group.

- one server: ``redis://[[user]:password@]host:port/db``, ``rediss://`` (TLS), ``unix:///path``:
  handed to redis-py's ``Redis.from_url`` as they are.
- a Redis Cluster: ``redis+cluster://[[user]:password@]host:port[,host:port…][/0]`` (``rediss+cluster://``
  for TLS). The hosts are startup nodes: any reachable one tells the client the others. A
  cluster has database 0 only.
- a Sentinel group: ``redis+sentinel://[[user]:password@]host:port[,host:port…]/<master name>[/<db>]``
  (``rediss+sentinel://`` for TLS to the sentinels and the data nodes). The hosts are the
  sentinels; the user and password are the *primary's*; the sentinels' own password is the
  setting ``STREAMREC_REDIS_SENTINEL_PASSWORD``.

Ports default to 6379 (data nodes) and 26379 (sentinels); user, password and master name are
percent-decoded like redis-py does (``%40`` for ``@``). Query arguments (``?…``) are only taken by
single-server URLs. Errors are ValueErrors whose message never contains the password.

Pure parsing, no redis import: the settings validate URLs with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote

from streamrec.shared.redaction import redacted_url

Kind = Literal["server", "cluster", "sentinel"]

SERVER_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
FORMS = (
    "redis://host:port/db (or rediss://, unix://), "
    "redis+cluster://host:port[,host:port…] (or rediss+cluster://), "
    "redis+sentinel://host:port[,host:port…]/<master name>/<db> (or rediss+sentinel://)"
)


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL points at.

    ``nodes`` are the cluster's startup nodes or the sentinels (empty for one server, whose URL
    redis-py parses itself); ``master_name`` is the Sentinel service name.
    """

    kind: Kind
    tls: bool
    nodes: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    master_name: str | None = None
    db: int = 0

    @property
    def where(self) -> str:
        """The nodes as ``host:port,host:port`` (for messages; never a password)."""
        return ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.nodes)


def redis_kind(url: str) -> Kind | None:
    """The kind of ``url`` by its scheme alone; None for a scheme streamrec does not know."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in SERVER_SCHEMES:
        return "server"
    if scheme in CLUSTER_SCHEMES:
        return "cluster"
    if scheme in SENTINEL_SCHEMES:
        return "sentinel"
    return None


def _node(text: str, default_port: int, shown: str | None) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [IPv6]:port
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"malformed host {text!r} in {shown!r}")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.partition(":")
        if colon and not port_text:
            raise ValueError(f"no port after {host!r}: in {shown!r}")
    if not host:
        raise ValueError(f"an empty host in {shown!r}: expected host:port[,host:port…]")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {port_text!r} of {host!r} is not a port number (1-65535) in {shown!r}")
    return host, int(port_text)


def parse_redis_url(url: str) -> RedisTarget:
    """``url`` as a :class:`RedisTarget`; ValueError (password-free) if it is malformed."""
    shown = redacted_url(url)
    kind = redis_kind(url)
    if kind is None:
        raise ValueError(f"expected {FORMS}; got {shown!r}")
    scheme, _, rest = url.partition("://")
    tls = scheme.lower().startswith("rediss")
    if kind == "server":
        return RedisTarget("server", tls)
    if "?" in rest or "#" in rest:
        raise ValueError(
            f"{scheme}:// URLs take no query arguments (?…): put user and password before the hosts "
            f"and TLS files in the STREAMREC_REDIS_TLS_* settings; got {shown!r}"
        )
    # The userinfo ends at the last "@" before the path (a percent-encoded password has none).
    authority, slash, path = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon and secret else None
    if not hosts.strip():
        raise ValueError(f"no host in {shown!r}: expected {scheme}://host:port[,host:port…]")
    default_port = DEFAULT_SENTINEL_PORT if kind == "sentinel" else DEFAULT_PORT
    nodes = tuple(_node(text, default_port, shown) for text in hosts.split(","))
    parts = [unquote(part) for part in path.split("/")] if slash else []
    while parts and parts[-1] == "":  # a trailing slash
        parts.pop()
    if kind == "cluster":
        if parts and parts != ["0"]:
            raise ValueError(
                f"a Redis Cluster has database 0 only: use {scheme}://host:port[,…][/0], got {shown!r}"
            )
        return RedisTarget("cluster", tls, nodes, username, password)
    if not parts or not parts[0]:
        raise ValueError(
            f"no master name in {shown!r}: expected {scheme}://host:port[,host:port…]/<master name>/<db>"
        )
    if len(parts) > 2:
        raise ValueError(f"too many path parts in {shown!r}: expected …/<master name>/<db>")
    db_text = parts[1] if len(parts) == 2 else "0"
    if not db_text.isdigit():
        raise ValueError(f"database {db_text!r} is not a number in {shown!r}: expected …/<master name>/<db>")
    return RedisTarget("sentinel", tls, nodes, username, password, parts[0], int(db_text))
