"""The PostgreSQL server of the tests, and a fresh schema per test.

`LEDGERFLOW_TEST_POSTGRES` names the server (a DSN); `.ci/run` sets it, and then a server that
cannot be reached fails the PostgreSQL tests instead of skipping them. Without it the tests try
the server every development machine here has (postgres@127.0.0.1:5432/test) and skip, with the
reason in the summary, when there is none.

Each test gets its own schema (`lft_<random>`), dropped afterwards, so tests never see each
other's ledgers; roles are cluster-wide, so a test that makes one names it `lft_<random>` too
and drops it (`pg_role` below).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

ENV = "LEDGERFLOW_TEST_POSTGRES"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
_probe: dict[str, str | None] = {}


def server_dsn() -> str:
    """The test server's DSN; fails (CI) or skips (no server, nothing asked) otherwise."""
    required = bool(os.environ.get(ENV))
    dsn = os.environ.get(ENV) or DEFAULT_DSN
    if dsn not in _probe:
        try:
            with psycopg.connect(dsn, connect_timeout=3, autocommit=True) as connection:
                connection.execute("SELECT 1")
            _probe[dsn] = None
        except psycopg.Error as exc:
            _probe[dsn] = str(exc).strip().splitlines()[0]
    problem = _probe[dsn]
    if problem is not None:
        if required:
            pytest.fail(f"{ENV}={dsn}: the PostgreSQL server cannot be reached: {problem}")
        pytest.skip(f"no PostgreSQL server at {dsn} ({problem}); set {ENV} to run these tests")
    return dsn


def with_schema(dsn: str, schema: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"


def admin() -> psycopg.Connection[Any]:
    """A connection as the server's test user (the owner of everything the tests create)."""
    return psycopg.connect(server_dsn(), autocommit=True)


def new_name() -> str:
    return f"lft_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A new, empty schema, dropped with everything in it after the test."""
    server_dsn()
    schema = new_name()
    with admin() as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield schema
    finally:
        with admin() as connection:
            connection.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )


@pytest.fixture
def pg_url(pg_schema: str) -> str:
    """postgresql://...?schema=<a new schema>: a ledger of the test's own."""
    return with_schema(server_dsn(), pg_schema)


@pytest.fixture
def pg_role() -> Iterator[str]:
    """The name of a login role to create (the test creates it); dropped after the test."""
    role = new_name()
    try:
        yield role
    finally:
        with admin() as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)
            ).fetchone()
            if exists:
                name = sql.Identifier(role)
                connection.execute(sql.SQL("DROP OWNED BY {}").format(name))
                connection.execute(sql.SQL("DROP ROLE {}").format(name))


def as_role(url: str, role: str) -> str:
    """The same database and schema, connecting as `role` (trust authentication)."""
    scheme, _, rest = url.partition("://")
    _, _, host = rest.partition("@")
    return f"{scheme}://{role}@{host}"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_db(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A new ledger database on each backend: a SQLite path, then a PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    url: str = request.getfixturevalue("pg_url")
    return url
