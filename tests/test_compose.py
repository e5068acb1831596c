"""The container files: docker-compose.dev.yml, the Dockerfile and .dockerignore.

No Docker engine is needed: the compose file is validated offline (``docker-compose config``)
and read as YAML; each service's environment is loaded through the real settings classes,
so a misspelt variable or a value the worker would refuse fails here, not at ``up``.
Nothing connects to anything.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from outbox.primitives.urls import libpq_dsn
from outbox.runtime.settings import WorkerSettings, load_settings
from sidecar.settings import SidecarSettings
from workers.chat import ChatSettings
from workers.document import DocumentSettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.dev.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

WORKERS = ("outbox-worker", "outbox-worker-document")
APP_SERVICES = ("migrate", "sidecar", "dashboard", *WORKERS)  # run from our image
SERVICES = {"postgres", "redis", *APP_SERVICES}
LONG_RUNNING = SERVICES - {"migrate"}
PUBLISHING = {"postgres", "redis", "sidecar", "dashboard"}  # the only ones with host ports

SETTINGS: dict[str, type[BaseSettings]] = {
    "outbox-worker": ChatSettings,
    "outbox-worker-document": DocumentSettings,
    "sidecar": SidecarSettings,
}

# Who waits for whom, and for what: this is the start order.
START_ORDER = {
    "postgres": {},
    "redis": {},
    "migrate": {"postgres": "service_healthy"},
    "sidecar": {"migrate": "service_completed_successfully"},
    "dashboard": {"migrate": "service_completed_successfully"},
    "outbox-worker": {"migrate": "service_completed_successfully", "redis": "service_healthy"},
    "outbox-worker-document": {
        "migrate": "service_completed_successfully",
        "sidecar": "service_healthy",
    },
}

SIDECAR_GRACEFUL_SHUTDOWN_SECONDS = 10  # uvicorn's timeout_graceful_shutdown, sidecar/__main__.py


@cache
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def service(name: str) -> dict[str, Any]:
    found = compose()["services"][name]
    assert isinstance(found, dict)
    return found


def environment(name: str) -> dict[str, str]:
    env = service(name).get("environment", {})
    assert isinstance(env, dict), f"{name}: write environment as a mapping"
    return {str(k): str(v) for k, v in env.items()}


@cache
def console_scripts() -> dict[str, str]:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert isinstance(scripts, dict)
    return scripts


def seconds(duration: str) -> float:
    """A compose duration (``1m30s``, ``45s``, ``500ms``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def healthcheck_url(name: str) -> str:
    test = service(name)["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], f"{name}: the slim image has no curl"
    found = re.search(r"urlopen\('([^']+)'", test[3])
    assert found, test
    return found.group(1)


# --- (1) the file is valid compose ---------------------------------------------------------


def compose_command() -> list[str] | None:
    for command in (["docker-compose"], ["docker", "compose"]):
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run(
            [*command, "version"], capture_output=True, text=True, timeout=60, check=False
        )
        if probe.returncode == 0:
            return command
    return None


def test_docker_compose_validates_the_file_offline() -> None:
    command = compose_command()
    if command is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed (CI must validate the compose file)")
        pytest.skip("docker-compose is not installed")
    done = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# --- (2) structure ----------------------------------------------------------------------------


def test_the_seven_services_and_nothing_pins_a_container_name() -> None:
    assert set(compose()["services"]) == SERVICES

    def keys(node: object) -> set[str]:
        if isinstance(node, dict):
            return {str(k) for k in node} | {k for v in node.values() for k in keys(v)}
        if isinstance(node, list):
            return {k for v in node for k in keys(v)}
        return set()

    assert "container_name" not in keys(compose())


@pytest.mark.parametrize("name", sorted(LONG_RUNNING))
def test_every_long_running_service_has_a_healthcheck(name: str) -> None:
    check = service(name).get("healthcheck")
    assert check and not check.get("disable") and check.get("test"), name
    assert check["test"][0] in ("CMD", "CMD-SHELL"), check
    assert service(name).get("restart") == "unless-stopped"


def test_depends_on_gives_the_start_order() -> None:
    for name, expected in START_ORDER.items():
        depends = service(name).get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        assert {k: v["condition"] for k, v in depends.items()} == expected, name
        for target, condition in expected.items():
            if condition == "service_healthy":
                assert "healthcheck" in service(target)
            else:  # completed successfully: it must be a one-shot
                assert service(target)["restart"] == "no"


def test_migrate_is_a_one_shot_of_the_cli() -> None:
    migrate = service("migrate")
    assert migrate["restart"] == "no"  # the string: an unquoted no would be YAML false
    assert migrate["command"] == ["outbox", "migrate", "--documents"]
    assert "healthcheck" not in migrate
    assert set(environment("migrate")) == {"DATABASE_URL"}  # the CLI's only setting
    libpq_dsn(environment("migrate")["DATABASE_URL"])


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_app_service_runs_a_declared_console_script_of_the_one_image(name: str) -> None:
    command = service(name)["command"]
    assert isinstance(command, list), f"{name}: use the exec form"
    assert command[0] in console_scripts(), command
    assert service(name)["init"] is True  # PID 1 reaps children and forwards signals
    assert service(name)["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert service(name)["image"] == service("migrate")["image"]
    assert service(name).get("ports") is None or name in PUBLISHING


def test_only_postgres_redis_the_sidecar_and_the_dashboard_publish_ports_on_loopback() -> None:
    for name in SERVICES:
        ports = service(name).get("ports")
        if name not in PUBLISHING:
            assert ports is None, f"{name} publishes ports: --scale would collide"
            continue
        assert ports, name
        for port in ports:
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), port


@pytest.mark.parametrize("name", WORKERS)
def test_workers_scale_safely(name: str) -> None:
    worker = service(name)
    env = environment(name)
    # Unique worker ids per replica: WORKER_ID defaults to host:pid, and each replica is a
    # container with its own hostname unless the file pins one (or pins WORKER_ID).
    assert "hostname" not in worker
    assert "WORKER_ID" not in {k.upper() for k in env}
    factory = WorkerSettings.model_fields["worker_id"].default_factory
    assert factory is not None
    assert str(factory()).startswith(f"{socket.gethostname()}:")  # type: ignore[call-arg]
    # Metrics on the container network only, with /readyz as the healthcheck.
    port = env["METRICS_PORT"]
    assert [str(p) for p in worker["expose"]] == [port]
    assert healthcheck_url(name) == f"http://127.0.0.1:{port}/readyz"
    # SIGTERM lets in-flight batches finish before compose sends SIGKILL.
    default_grace = WorkerSettings.model_fields["shutdown_grace_seconds"].default
    grace = float(env.get("SHUTDOWN_GRACE_SECONDS", default_grace))
    assert seconds(worker["stop_grace_period"]) > grace


def test_the_sidecar_listens_on_all_interfaces_and_stops_in_time() -> None:
    env = environment("sidecar")
    assert env["SIDECAR_HOST"] == "0.0.0.0"  # inside its container
    port = env.get("SIDECAR_PORT", "8000")
    assert healthcheck_url("sidecar") == f"http://127.0.0.1:{port}/healthz"
    assert any(p.endswith(f":{port}") for p in service("sidecar")["ports"])
    stop = seconds(service("sidecar")["stop_grace_period"])
    assert stop > SIDECAR_GRACEFUL_SHUTDOWN_SECONDS


# --- (3) every value passes the real settings ---------------------------------------------


def variable_names(cls: type[BaseSettings]) -> set[str]:
    """Every environment variable ``cls`` reads, upper case (aliases included)."""
    names = set()
    for field_name, field in cls.model_fields.items():
        names.add(field_name.upper())
        if isinstance(field.validation_alias, AliasChoices):
            names |= {str(c).upper() for c in field.validation_alias.choices}
    return names


def load_service_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``name``'s settings, read from exactly its compose environment."""
    cls = SETTINGS[name]
    for key in list(os.environ):  # the host's DATABASE_URL etc. must not leak in
        if key.upper() in variable_names(cls):
            monkeypatch.delenv(key)
    for key, value in environment(name).items():
        monkeypatch.setenv(key, value)
    return load_settings(cls)  # raises ConfigurationError naming any bad variable


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_variable_set_is_a_real_setting(name: str) -> None:
    unknown = {k.upper() for k in environment(name)} - variable_names(SETTINGS[name])
    assert not unknown, f"{name} sets variables nothing reads: {sorted(unknown)}"


def test_the_chat_worker_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_service_settings("outbox-worker", monkeypatch)
    assert isinstance(settings, ChatSettings)
    assert urlsplit(settings.redis_url).hostname == "redis"
    assert settings.exclude == ("document.",)  # leaves the document worker's rows alone
    assert settings.metrics_port is not None


def test_the_document_worker_settings_load_and_match_the_sidecar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sidecar = load_service_settings("sidecar", monkeypatch)
    worker = load_service_settings("outbox-worker-document", monkeypatch)
    assert isinstance(sidecar, SidecarSettings)
    assert isinstance(worker, DocumentSettings)
    assert worker.include == ("document.",)
    assert worker.metrics_port is not None
    base = urlsplit(worker.sidecar_base_url)
    assert (base.hostname, base.port) == ("sidecar", sidecar.sidecar_port)
    assert worker.sidecar_token.get_secret_value() == sidecar.sidecar_token.get_secret_value()
    # Extraction gives up (422) before the worker's call times out, which is below the
    # handler timeout (the latter is also enforced by DocumentSettings itself).
    assert sidecar.parse_timeout_seconds < worker.sidecar_timeout_seconds
    assert worker.sidecar_timeout_seconds < worker.handler_timeout_seconds


def test_everyone_uses_the_compose_postgres() -> None:
    postgres = environment("postgres")
    urls = {environment(name)["DATABASE_URL"] for name in APP_SERVICES}
    assert len(urls) == 1
    url = urlsplit(urls.pop())
    assert (url.hostname, url.port or 5432) == ("postgres", 5432)
    assert url.username == postgres["POSTGRES_USER"]
    assert url.password == postgres["POSTGRES_PASSWORD"]
    assert url.path == "/" + postgres["POSTGRES_DB"]


# --- (4) the Dockerfile and its build context ----------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuations joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1]
            continue
        whole, pending = (pending + line).strip(), ""
        if whole:
            keyword, _, arguments = whole.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (what follows each FROM)."""
    found: list[list[tuple[str, str]]] = []
    for keyword, arguments in dockerfile_instructions():
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, arguments))
    return found


def base_images() -> list[str]:
    """Each stage's base image, build ARG defaults substituted."""
    args: dict[str, str] = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in arguments:
            name, _, value = arguments.partition("=")
            args[name] = value
    images = []
    for stage in stages():
        image = next(a for a in stage[0][1].split() if not a.startswith("--"))
        images.append(re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], image))
    return images


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and value, arguments
    return [str(v) for v in value]


def test_every_stage_builds_on_python_3_11_slim() -> None:
    assert len(stages()) >= 2, "build the wheel in a builder stage"
    assert set(base_images()) == {"python:3.11-slim"}


def test_the_final_stage_runs_a_console_script_as_a_non_root_user() -> None:
    final = stages()[-1]
    commands = [exec_form(a) for k, a in final if k in ("CMD", "ENTRYPOINT")]
    assert commands, "the final stage needs a CMD"
    for command in commands:
        assert command[0] in console_scripts(), command
    users = [a for k, a in final if k == "USER"]
    assert users, "the final stage must set USER"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_the_final_stage_holds_the_installed_wheel_only() -> None:
    final = stages()[-1]
    env: dict[str, str] = {}
    for keyword, arguments in final:
        if keyword == "ENV":
            env.update(part.split("=", 1) for part in shlex.split(arguments))  # type: ignore[arg-type]
        if keyword in ("COPY", "ADD"):
            assert "--from=" in arguments, f"sources copied into the final image: {arguments}"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    runs = " ".join(a for k, a in final if k == "RUN")
    assert "pg-outbox-relay[" in runs
    for tool in ("gcc", "build-essential", "pytest", "[dev]"):
        assert tool not in runs


# The extra each console script needs on top of the base install (pyproject.toml).
EXTRA_OF_SCRIPT = {
    "outbox": None,
    "outbox-chat-worker": "chat",
    "outbox-document-worker": "document",
    "outbox-sidecar": "sidecar",
}


def installed_extras(stage: list[tuple[str, str]], requirement: str) -> set[str]:
    """The extras of ``requirement[...]`` that the stage's RUN instructions install."""
    runs = " ".join(a for k, a in stage if k == "RUN")
    found = re.findall(re.escape(requirement) + r"\[([\w,-]+)\]", runs)
    assert found, f"no {requirement}[...] in {runs}"
    return {extra.strip() for group in found for extra in group.split(",")}


# The extra an ``outbox`` subcommand needs on top of the base install (the others: none).
EXTRA_OF_SUBCOMMAND = {"dashboard": "dashboard"}


def extra_of(command: list[str]) -> str | None:
    """The extra a service's command needs (a console script, or ``outbox <subcommand>``)."""
    if command[0] == "outbox" and len(command) > 1:
        return EXTRA_OF_SUBCOMMAND.get(command[1])
    return EXTRA_OF_SCRIPT[command[0]]


def test_the_image_has_the_extra_of_every_process_it_runs() -> None:
    assert set(console_scripts()) == set(EXTRA_OF_SCRIPT), "which extra does a new script need?"
    commands = [service(name)["command"] for name in APP_SERVICES]
    commands += [exec_form(a) for k, a in stages()[-1] if k == "CMD"]
    needed = {extra_of(command) for command in commands} - {None}
    assert needed == {"chat", "document", "sidecar", "dashboard"}
    installed = installed_extras(stages()[-1], "pg-outbox-relay")
    assert needed <= installed
    assert installed_extras(stages()[0], '".') == installed, "the builder wheels the same"
    assert not installed & {"dev", "localservers"}


_WILDCARDS = {"**": ".*", "*": "[^/]*", "?": "[^/]"}


def glob_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regular expression (``*`` stops at ``/``, ``**`` not)."""
    tokens = re.findall(r"\*\*|\*|\?|\[[^\]]*\]|[^*?\[]+", pattern)
    regex = "".join(_WILDCARDS.get(t, t if t.startswith("[") else re.escape(t)) for t in tokens)
    return regex.replace(".*/", "(?:.*/)?")  # **/x also matches x at the top


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore ``patterns`` keep ``path`` (or a folder above it) out."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.removeprefix("!").strip("/")
        if any(re.fullmatch(glob_regex(pattern), c) for c in candidates):
            result = not negate
    return result


def test_the_build_context_keeps_out_the_venv_and_git_but_not_the_sources() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    for unwanted in (".venv", ".git", ".venv/bin/python", ".git/HEAD", ".pytest_cache"):
        assert ignored(unwanted, patterns), unwanted
    assert ignored("outbox/__pycache__/x.cpython-311.pyc", patterns)
    builder = stages()[0]
    sources = [
        source.rstrip("/")
        for keyword, arguments in builder
        if keyword == "COPY" and "--from=" not in arguments
        for source in arguments.split()[:-1]
    ]
    # The wheel needs its packages, the readme, and the folder outbox/_migrations links to.
    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    linked = (ROOT / "outbox" / "_migrations").resolve().relative_to(ROOT)
    needed = {"pyproject.toml", "README.md", str(linked), *wheel["targets"]["wheel"]["packages"]}
    assert needed <= set(sources), f"the builder stage does not copy {needed - set(sources)}"
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source, patterns), f".dockerignore drops {source}"
        assert not ignored(f"{source}/__init__.py", patterns), source
