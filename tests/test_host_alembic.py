"""A host application's own Alembic, set up exactly as docs/table-and-migrations.md says
("Inside your application's Alembic"): a project made by ``alembic init``, the docs'
``alembic.ini`` lines and ``env.py`` snippets applied, then the docs' commands run in order.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from outbox.storage.migrate import migrations_dir
from tests.conftest import query

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "table-and-migrations.md"

MODELS = """
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id = sa.Column(sa.Integer, primary_key=True)
    body = sa.Column(sa.Text, nullable=False)
"""


def _section() -> str:
    text = DOCS.read_text()
    start = text.index("## Inside your application's Alembic")
    return text[start : text.index("\n## ", start + 1)]


def _blocks(kind: str) -> list[str]:
    return [
        re.sub(r"^ {3}", "", block, flags=re.MULTILINE)
        for block in re.findall(rf"```{kind}\n(.*?)```", _section(), flags=re.DOTALL)
    ]


def _alembic(host: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=host,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _make_host(host: Path, database_url: str) -> None:
    """``alembic init alembic``, then the docs' ``ini`` lines and ``env.py`` snippets."""
    host.mkdir()
    assert _alembic(host, "init", "alembic").returncode == 0
    (host / "myapp").mkdir()
    (host / "myapp" / "__init__.py").write_text("")
    (host / "myapp" / "models.py").write_text(MODELS)

    ini = (host / "alembic.ini").read_text()
    (ini_lines,) = _blocks("ini")
    for line in ini_lines.strip().splitlines():
        key = line.split("=", 1)[0].strip()
        # the setting's line, else its commented-out example
        for pattern in (rf"^{key} = .*$", rf"^# {key} = .*$"):
            ini, replaced = re.subn(pattern, line, ini, count=1, flags=re.MULTILINE)
            if replaced:
                break
        assert replaced, f"alembic init wrote no {key} line"
    url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    ini = re.sub(r"^sqlalchemy\.url = .*$", f"sqlalchemy.url = {url}", ini, flags=re.MULTILINE)
    (host / "alembic.ini").write_text(ini)

    env = (host / "alembic" / "env.py").read_text()
    imports_and_metadata, configure = _blocks("python")
    assert "target_metadata = None\n" in env
    env = env.replace("target_metadata = None\n", imports_and_metadata)
    arguments = [line.strip().rstrip(",") for line in configure.splitlines()[1:-1]]
    assert arguments[:2] == ["connection=connection", "target_metadata=target_metadata"]
    hooks = arguments[2:]
    assert len(hooks) == 2, configure
    # both context.configure(...) calls: offline (target_metadata=..., literal_binds=...)
    # and online (connection=connection, target_metadata=target_metadata)
    calls = env.count("target_metadata=target_metadata")
    assert calls == 2, env
    env = env.replace(
        "target_metadata=target_metadata", ", ".join(["target_metadata=target_metadata", *hooks])
    )
    (host / "alembic" / "env.py").write_text(env)


def _heads(database_url: str) -> set[object]:
    return {row[0] for row in query(database_url, "SELECT version_num FROM alembic_version")}


def _tables(database_url: str) -> set[object]:
    rows = query(database_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {row[0] for row in rows}


def _shipped() -> set[Path]:
    return set((migrations_dir() / "versions").resolve().glob("*.py"))


def test_a_host_project_made_by_alembic_init_follows_the_docs(
    empty_database: str, tmp_path: Path
) -> None:
    host = tmp_path / "host"
    _make_host(host, empty_database)
    versions = host / "alembic" / "versions"
    commands = [
        shlex.split(line.removeprefix("$ "))
        for line in _blocks("console")[0].splitlines()
        if line.startswith("$ alembic ")
    ]
    assert [c[1] for c in commands] == ["upgrade", "revision", "upgrade", "revision", "downgrade"]
    upgrade, first, upgrade_again, second, downgrade = (c[1:] for c in commands)
    shipped = _shipped()
    try:
        done = _alembic(host, *upgrade)
        assert done.returncode == 0, done.stderr
        assert _tables(empty_database) >= {"outbox", "alembic_version"}
        assert _heads(empty_database) == {"outbox_0007"}

        # The trap: a plain revision while the outbox is the only head would land
        # in the package's folder (site-packages in a wheel install). Refused, nothing written.
        done = _alembic(host, "revision", "--autogenerate", "-m", "oops")
        assert done.returncode != 0
        assert "refusing to write a revision into the outbox's own migrations" in done.stderr
        assert "--head base --branch-label" in done.stderr

        done = _alembic(host, *first)
        assert done.returncode == 0, done.stderr
        (created,) = versions.glob("*.py")
        script = created.read_text()
        assert "op.create_table('notes'" in script or 'op.create_table("notes"' in script
        assert "outbox" not in script.replace("create app tables", "")  # no drop_table('outbox')
        assert re.search(r"^branch_labels\b.* = \('app',\)$", script, flags=re.MULTILINE)

        done = _alembic(host, *upgrade_again)
        assert done.returncode == 0, done.stderr
        assert "notes" in _tables(empty_database)

        done = _alembic(host, *second)
        assert done.returncode == 0, done.stderr
        (empty,) = set(versions.glob("*.py")) - {created}
        body = empty.read_text()
        upgrade_body = body[body.index("def upgrade") : body.index("def downgrade")]
        assert "op." not in upgrade_body, body  # the outbox's tables are not a difference

        done = _alembic(host, *downgrade)
        assert done.returncode == 0, done.stderr
        assert "notes" not in _tables(empty_database)
        assert _heads(empty_database) == {"outbox_0007"}  # the outbox branch left alone
        assert {"outbox", "outbox_audit"} <= _tables(empty_database)
    finally:
        strays = _shipped() - shipped
        for stray in strays:  # never leave a test's revision in the package
            stray.unlink()
        assert not strays, f"revisions written into the package: {sorted(map(str, strays))}"
