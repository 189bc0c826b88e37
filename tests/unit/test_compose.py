"""Static checks of the docker compose deployment (no Docker engine needed).

docker-compose.yml is checked against the Compose Specification's JSON Schema, and against
streamrec itself: its STREAMREC_* variables must be settings, its commands CLI commands, its
images pinned, its dependencies waitable. The same goes for .env.example, the Dockerfile and the
Prometheus config. So renaming a setting or a command breaks a test here, not a deployment.

Every check is a function returning a list of problems (empty = fine). The tests assert that it
is empty for the real files, and non-empty for deliberately broken examples.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml

from streamrec.cli import cli
from streamrec.kafka_cluster import KAFKA_VERSION
from streamrec.shared.settings import ENV_PREFIX, MODEL_DEFAULTS, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"
# The Compose Specification schema lives beside the repo, in ../shared (never copied in).
COMPOSE_SCHEMA = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "compose-spec.json"

SETTING_NAME = re.compile(re.escape(ENV_PREFIX) + r"[A-Z0-9_]+")
KNOWN_SETTINGS = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
ENV_LINE = re.compile(r"(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)")
COMMENTED_SETTING = re.compile(r"#\s*(?P<key>" + SETTING_NAME.pattern + r")=(?P<value>.*)")
# A pinned tag: at least major.minor.patch, optionally with a variant (3.11.13-slim-bookworm).
VERSION_TAG = re.compile(r"v?\d+\.\d+\.\d+([-+._][0-9A-Za-z._+-]+)?")
# Compose interpolation: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR.
INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)
READYZ_PORT = re.compile(r"http://127\.0\.0\.1:(\d+)/readyz")


# --- reading the files -------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def parse_env_file(text: str) -> tuple[dict[str, str], list[str]]:
    """KEY=VALUE lines of an env file (blank lines and # comments skipped), and what is malformed."""
    values: dict[str, str] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = ENV_LINE.fullmatch(stripped)
        if match is None:
            problems.append(f"line {number}: not KEY=VALUE: {line!r}")
        elif match["key"] in values:
            problems.append(f"line {number}: {match['key']} set twice")
        else:
            values[match["key"]] = match["value"]
    return values, problems


def env_example() -> dict[str, str]:
    values, problems = parse_env_file(ENV_EXAMPLE.read_text())
    assert problems == []
    return values


def interpolate(value: Any, env: Mapping[str, str], problems: list[str]) -> Any:
    """``value`` (a compose document or part of it) with variables substituted as compose does."""
    if isinstance(value, dict):
        return {key: interpolate(item, env, problems) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env, problems) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        current, op, arg = env.get(name), match["op"], match["arg"]
        missing = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if missing else current  # type: ignore[return-value]
        if op in (":?", "?") and missing:
            problems.append(f"{name}: {arg}")
        elif current is None:
            problems.append(f"{name} is not set")
        return current or ""

    return INTERPOLATION.sub(substitute, value)


def resolved_compose() -> dict[str, Any]:
    """docker-compose.yml as compose runs it with .env = .env.example plus a password."""
    problems: list[str] = []
    compose = interpolate(load_compose(), env_example() | {"REDIS_PASSWORD": "s3cret"}, problems)
    assert problems == []
    return compose


def streamrec_services(services: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from the project's Dockerfile: they run `streamrec <command>`."""
    return {name: service for name, service in services.items() if "build" in service}


def long_running(service: Mapping[str, Any]) -> bool:
    return service.get("restart", "no") != "no"


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def pinned_torch(text: str) -> str | None:
    match = re.search(r"\btorch==([0-9][0-9A-Za-z.+]*)", text)
    return match[1] if match else None


# --- the checks ----------------------------------------------------------------------------------


def schema_problems(compose: Mapping[str, Any]) -> list[str]:
    """Violations of the Compose Specification (the schema declares JSON Schema draft 7)."""
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in validator.iter_errors(compose)
    ]


def unknown_settings(text: str) -> list[str]:
    """STREAMREC_* names in ``text`` that are not fields of Settings."""
    return sorted(set(SETTING_NAME.findall(text)) - KNOWN_SETTINGS)


def cli_problems(argv: list[str]) -> list[str]:
    """Why ``streamrec *argv`` would not parse: unknown command, subcommand, option or bad value."""
    command: click.Command = cli
    words, path = list(argv), ["streamrec"]
    while isinstance(command, click.Group):
        if not words:
            return [f"{' '.join(path)}: a subcommand is needed ({', '.join(command.commands)})"]
        name = words.pop(0)
        if name not in command.commands:
            return [f"{' '.join(path)}: no command {name!r} ({', '.join(command.commands)})"]
        command, path = command.commands[name], [*path, name]
    try:
        command.make_context(" ".join(path), words)  # parses and converts, runs nothing
    except click.ClickException as exc:
        return [f"{' '.join(path)}: {exc.format_message()}"]
    return []


def unpinned(image: str) -> str | None:
    """Why ``image`` is not pinned to a version (None if it is)."""
    if "@sha256:" in image:
        return None
    _, colon, tag = image.rpartition(":")
    if not colon or "/" in tag:  # no tag, or the colon was a registry port's
        return f"{image}: no tag, i.e. whatever `latest` is today"
    if not VERSION_TAG.fullmatch(tag):
        return f"{image}: tag {tag!r} is not a major.minor.patch version"
    return None


def image_problems(services: Mapping[str, Mapping[str, Any]], version: str) -> list[str]:
    """Third-party images pinned; the project's image tagged with the project's version."""
    problems = []
    for name, service in services.items():
        image = service.get("image")
        if "build" in service:
            if image != f"streamrec:{version}":
                problems.append(f"{name}: built image should be tagged streamrec:{version}, not {image}")
        elif image is None:
            problems.append(f"{name}: neither image nor build")
        elif reason := unpinned(image):
            problems.append(f"{name}: {reason}")
    return problems


def dependency_problems(services: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """depends_on targets exist, and can reach the awaited condition."""
    problems = []
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        if isinstance(depends_on, list):
            problems.append(f"{name}: depends_on without conditions starts before dependencies are ready")
            continue
        for target, spec in depends_on.items():
            other = services.get(target)
            if other is None:
                problems.append(f"{name}: depends on unknown service {target!r}")
                continue
            condition = spec.get("condition")
            if condition == "service_healthy":
                check = other.get("healthcheck", {})
                if not check.get("test") or check.get("disable"):
                    problems.append(f"{name}: waits for {target} to be healthy, which has no healthcheck")
            elif condition == "service_completed_successfully" and long_running(other):
                problems.append(f"{name}: waits for {target} to complete, which restarts forever")
            if other.get("profiles") and not service.get("profiles"):
                problems.append(f"{name}: always started, but depends on {target}, which is in a profile")
    return problems


def service_problems(services: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every service says how it restarts; every long-running one how it is checked."""
    problems = []
    for name, service in services.items():
        if "restart" not in service:
            problems.append(f"{name}: no restart policy")
        elif long_running(service) and "healthcheck" not in service:
            problems.append(f"{name}: long-running without a healthcheck")
    return problems


def ops_port_problems(services: Mapping[str, Mapping[str, Any]], prometheus: Mapping[str, Any]) -> list[str]:
    """Healthcheck and Prometheus use the port each streamrec service serves its endpoints on."""
    scraped = {
        (name, target["port"])
        for job in prometheus.get("scrape_configs", [])
        for target in job.get("dns_sd_configs", [])
        for name in target.get("names", [])
    }
    problems = []
    for name, service in streamrec_services(services).items():
        if not long_running(service):
            continue
        env = {key: str(value) for key, value in service.get("environment", {}).items()}
        kind = "API" if service["command"][0] == "api" else "METRICS"
        host, port = env.get(f"{ENV_PREFIX}{kind}_HOST"), env.get(f"{ENV_PREFIX}{kind}_PORT")
        if host != "0.0.0.0":
            problems.append(f"{name}: {ENV_PREFIX}{kind}_HOST is {host}, unreachable from outside")
        checked = READYZ_PORT.findall(" ".join(service.get("healthcheck", {}).get("test", [])))
        if checked != [port]:
            problems.append(f"{name}: healthcheck asks port {checked}, the service listens on {port}")
        if port is None or (name, int(port)) not in scraped:
            problems.append(f"{name}: Prometheus does not scrape {name}:{port}")
    return problems


def volume_problems(services: Mapping[str, Mapping[str, Any]], declared: Mapping[str, Any]) -> list[str]:
    """State lives in declared volumes, mounted where the settings point."""
    problems = []
    model_volumes: dict[str, str] = {}
    for name, service in streamrec_services(services).items():
        env = {key: str(value) for key, value in service.get("environment", {}).items()}
        mounts = {}
        for spec in service.get("volumes", []):
            source, target, *_ = f"{spec}:".split(":")
            mounts[target] = source
            if not source.startswith((".", "/", "$")) and source not in declared:
                problems.append(f"{name}: volume {source!r} is not declared")
        command = service["command"][0]
        if command in ("ingest", "trainer") and env[f"{ENV_PREFIX}DATA_DIR"] not in mounts:
            problems.append(f"{name}: its state ({ENV_PREFIX}DATA_DIR) is not on a volume")
        if command in ("trainer", "scorer", "api"):  # the api scores anonymous sessions
            model_volumes[name] = mounts.get(env[f"{ENV_PREFIX}MODEL_DIR"], "(none)")
            if command != "trainer" and not any(
                str(spec).startswith(f"{model_volumes[name]}:") and str(spec).endswith(":ro")
                for spec in service.get("volumes", [])
            ):
                problems.append(
                    f"{name}: the model registry must be mounted read-only (only the trainer writes)"
                )
    if len(set(model_volumes.values())) != 1 or "(none)" in model_volumes.values():
        problems.append(f"trainer, scorer and api must share the model registry volume: {model_volumes}")
    return problems


def env_example_problems(text: str) -> list[str]:
    """.env.example parses, lists every setting, and shows each commented setting's true default."""
    _, problems = parse_env_file(text)
    problems += [
        f"{name} is a setting missing from .env.example"
        for name in sorted(KNOWN_SETTINGS - set(SETTING_NAME.findall(text)))
    ]
    default_model = Settings.model_fields["model"].default
    for line in text.splitlines():
        match = COMMENTED_SETTING.fullmatch(line.strip())
        if match is None or match["key"] not in KNOWN_SETTINGS:
            continue
        name = match["key"].removeprefix(ENV_PREFIX).lower()
        default = MODEL_DEFAULTS[default_model].get(name, Settings.model_fields[name].default)
        if match["value"] != ("" if default is None else str(default)):  # unset: an empty value
            problems.append(
                f"{match['key']}: .env.example shows {match['value']!r}, the default is {default!r}"
            )
    return problems


def variable_problems(compose_text: str, env: Mapping[str, str]) -> list[str]:
    """Every variable compose interpolates is in .env.example, with the same default."""
    problems = []
    for match in INTERPOLATION.finditer(compose_text):
        name = match["braced"] or match["named"]
        if name is None:
            continue
        if name not in env:
            problems.append(f"{name}: used by docker-compose.yml, missing from .env.example")
        elif match["op"] in (":-", "-") and match["arg"] != env[name]:
            problems.append(f"{name}: default {match['arg']!r} in compose, {env[name]!r} in .env.example")
    return problems


def dockerfile_problems(text: str, pyproject_text: str) -> list[str]:
    """Pinned base images, streamrec as the entrypoint, a non-root user, pyproject's torch."""
    instructions = dockerfile_instructions(text)
    problems = []
    args: dict[str, str] = {}
    stages: set[str] = set()
    for keyword, arguments in instructions:
        if keyword == "ARG" and not stages and "=" in arguments:  # global ARGs, usable in FROM
            key, _, value = arguments.partition("=")
            args[key] = value
        elif keyword == "FROM":
            image, *alias = arguments.split()
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), image)
            if image not in stages and (reason := unpinned(image)):
                problems.append(f"FROM {reason}")
            stages.add(alias[-1] if alias else image)
    entrypoints = [arguments for keyword, arguments in instructions if keyword == "ENTRYPOINT"]
    if not entrypoints or json.loads(entrypoints[-1]) != ["streamrec"]:
        problems.append(f'ENTRYPOINT should be ["streamrec"], is {entrypoints[-1:]}')
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append("the image runs as root")
    if pinned_torch(text) != pinned_torch(pyproject_text):
        problems.append(
            f"torch {pinned_torch(text)} in the Dockerfile, {pinned_torch(pyproject_text)} in pyproject"
        )
    return problems


# --- the real files ------------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification():
    assert schema_problems(load_compose()) == []


def test_every_streamrec_variable_is_a_setting():
    assert unknown_settings(COMPOSE_FILE.read_text()) == []
    assert unknown_settings(ENV_EXAMPLE.read_text()) == []


def test_env_example_lists_every_setting_with_its_default():
    assert env_example_problems(ENV_EXAMPLE.read_text()) == []


def test_compose_variables_are_documented_in_env_example():
    assert variable_problems(COMPOSE_FILE.read_text(), env_example()) == []


def test_env_example_leaves_only_the_password_to_fill_in():
    problems: list[str] = []
    interpolate(load_compose(), env_example(), problems)
    assert {problem.split(":")[0] for problem in problems} == {"REDIS_PASSWORD"}

    for service in streamrec_services(resolved_compose()["services"]).values():
        assert service["environment"][f"{ENV_PREFIX}REDIS_URL"] == "redis://:s3cret@redis:6379/0"


def test_every_service_command_is_a_cli_command():
    services = streamrec_services(resolved_compose()["services"])
    assert {service["command"][0] for service in services.values()} >= {"ingest", "trainer", "scorer", "api"}
    for name, service in services.items():
        assert cli_problems(service["command"]) == [], name


def test_images_are_pinned():
    assert image_problems(load_compose()["services"], project_version()) == []


def test_dependencies_and_restarts():
    services = load_compose()["services"]
    assert dependency_problems(services) == []
    assert service_problems(services) == []


def test_endpoints_and_state():
    compose = resolved_compose()
    prometheus = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert ops_port_problems(compose["services"], prometheus) == []
    assert volume_problems(compose["services"], compose.get("volumes", {})) == []


def test_dockerfile():
    assert dockerfile_problems(DOCKERFILE.read_text(), (ROOT / "pyproject.toml").read_text()) == []


# --- the checks find what they are for -----------------------------------------------------------


def test_schema_check_finds_an_invalid_service():
    compose = {"services": {"redis": {"image": "redis:7.4.6", "restart_policy": "always"}}}
    assert any("restart_policy" in problem for problem in schema_problems(compose))


def test_settings_check_finds_a_misspelt_variable():
    assert unknown_settings("STREAMREC_KAFKA_BOOTSTRAPS=kafka:9092\nSTREAMREC_TOP_N=5") == [
        "STREAMREC_KAFKA_BOOTSTRAPS"
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["ingets"],
        ["topics"],
        ["topics", "delete"],
        ["ingest", "extra"],
        ["replay", "f", "--sped", "2"],
        ["replay", "f", "--speed", "fast"],
        ["replay"],
    ],
)
def test_cli_check_finds_a_wrong_command(argv):
    assert cli_problems(argv) != []


def test_cli_check_accepts_a_right_command():
    assert cli_problems(["replay", "/datasets/ml-100k/u.data", "--speed", "86400"]) == []


@pytest.mark.parametrize(
    "image", ["redis", "redis:latest", "redis:7", "apache/kafka:3.9", "localhost:5000/kafka"]
)
def test_image_check_finds_an_unpinned_image(image):
    assert unpinned(image) is not None
    assert image_problems({"x": {"image": image}}, "0.1.0") != []


@pytest.mark.parametrize(
    "image",
    ["redis:7.4.6", "prom/prometheus:v3.5.0", "python:3.11.13-slim-bookworm", "localhost:5000/k:1.2.3"],
)
def test_image_check_accepts_a_pinned_image(image):
    assert unpinned(image) is None


def test_image_check_wants_the_built_image_tagged_with_the_project_version():
    assert image_problems({"api": {"build": ".", "image": "streamrec:latest"}}, "0.1.0") != []


def test_dependency_check_finds_unreachable_conditions():
    services = {
        "api": {"restart": "always", "depends_on": {"redis": {"condition": "service_healthy"}}},
        "redis": {"image": "redis:7.4.6", "restart": "always"},
        "ingest": {"depends_on": {"topics": {"condition": "service_completed_successfully"}}},
        "topics": {"restart": "unless-stopped"},
        "scorer": {"depends_on": {"replay": {"condition": "service_started"}, "gone": {"condition": "x"}}},
        "replay": {"profiles": ["demo"]},
    }
    problems = " | ".join(dependency_problems(services))
    for expected in ("no healthcheck", "restarts forever", "in a profile", "unknown service 'gone'"):
        assert expected in problems
    assert "long-running without a healthcheck" in " | ".join(service_problems(services))


def test_env_file_check_finds_malformed_lines_and_wrong_defaults():
    _, problems = parse_env_file("# fine\nA=1\nnot a pair\nA=2\n")
    assert len(problems) == 2
    problems = env_example_problems("# STREAMREC_PARTITIONS=5\n")
    assert any("STREAMREC_PARTITIONS: .env.example shows '5'" in problem for problem in problems)
    assert any("STREAMREC_TOP_N is a setting missing" in problem for problem in problems)


def test_interpolation_follows_compose():
    problems: list[str] = []
    env = {"SET": "v", "EMPTY": ""}
    text = "$$SET ${SET} ${EMPTY:-d} ${EMPTY-d} ${UNSET:-d} ${EMPTY:?need it} $SET"
    assert interpolate(text, env, problems) == "$SET v d  d  v"
    assert problems == ["EMPTY: need it"]
    assert variable_problems("${NEW:-1} ${SET:-other}", env) == [
        "NEW: used by docker-compose.yml, missing from .env.example",
        "SET: default 'other' in compose, 'v' in .env.example",
    ]


def test_endpoint_and_volume_checks_find_mismatches():
    services = {
        "scorer": {
            "build": ".",
            "restart": "always",
            "command": ["scorer"],
            "environment": {
                "STREAMREC_METRICS_HOST": "127.0.0.1",
                "STREAMREC_METRICS_PORT": 9100,
                "STREAMREC_MODEL_DIR": "/models",
            },
            "healthcheck": {"test": ["CMD", "python", "-c", "urlopen('http://127.0.0.1:9200/readyz')"]},
            "volumes": ["models:/models:ro"],
        },
        "trainer": {
            "build": ".",
            "command": ["trainer"],
            "environment": {"STREAMREC_DATA_DIR": "/data", "STREAMREC_MODEL_DIR": "/models"},
            "volumes": ["other:/models"],
        },
        "api": {
            "build": ".",
            "command": ["api"],
            "environment": {"STREAMREC_MODEL_DIR": "/models"},
            "volumes": ["models:/models"],
        },
    }
    problems = " | ".join(ops_port_problems(services, {"scrape_configs": []}))
    for expected in ("unreachable from outside", "asks port ['9200']", "does not scrape scorer:9100"):
        assert expected in problems
    problems = " | ".join(volume_problems(services, {"models": None}))
    for expected in (
        "'other' is not declared",
        "trainer: its state",
        "must share the model registry",
        "api: the model registry must be mounted read-only",
    ):
        assert expected in problems


def test_dockerfile_check_finds_problems():
    text = 'FROM python:3.11-slim AS build\nRUN pip install torch==2.0.0\nFROM build\nENTRYPOINT ["python"]\n'
    problems = " | ".join(dockerfile_problems(text, 'dependencies = ["torch==2.13.0"]'))
    for expected in ("FROM python:3.11-slim", "ENTRYPOINT", "runs as root", "torch 2.0.0"):
        assert expected in problems


def test_compose_runs_the_kafka_version_the_tests_run():
    # The integration tests run on Apache Kafka from scripts/fetch-kafka's jars.
    fetched = re.search(
        r"^KAFKA_VERSION=(\S+)$", (ROOT / "scripts" / "fetch-kafka").read_text(), re.MULTILINE
    )
    assert fetched is not None and fetched.group(1) == KAFKA_VERSION
    assert load_compose()["services"]["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
