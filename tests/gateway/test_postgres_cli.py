"""The command line on a PostgreSQL ledger: `db init` and the application role's grants (it
can run, resume, erase and audit, and can neither UPDATE, DELETE nor TRUNCATE evidence), the key
files a database cannot hold beside it, and `migrate` from SQLite and back, verified."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from gateway.cli import main
from kernel import Trace, TraceStatus
from kernel.capability import TOMBSTONE
from tests.postgres import as_role, server_dsn, with_schema

PAYMENT_FLOW = "examples/payment_flow.yaml"
TOOLS = "examples.payments:TOOLS"
PLAINTEXT = "Jane-Q-Public-ORDER-7731"
SECRET_ORDER = json.dumps({"order_id": {"$secret": PLAINTEXT, "subject": "cust-42"}, "amount": 250})
LEDGER_TABLES = ("envelopes", "checkpoints", "policies", "signing_keys", "ledger_meta")


class Cli:
    """`ledgerflow` in this process, its output captured; key files in `directory`."""

    def __init__(self, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.kek, self.signing_key = directory / "ledger.kek", directory / "ledger.signing-key"
        for name in ("LEDGERFLOW_DB", "LEDGERFLOW_KEK", "LEDGERFLOW_SIGNING_KEY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("LEDGERFLOW_KEK_FILE", str(self.kek))
        monkeypatch.setenv("LEDGERFLOW_SIGNING_KEY_FILE", str(self.signing_key))
        monkeypatch.chdir(Path(__file__).resolve().parents[2])

    def __call__(self, *args: str, code: int = 0) -> str:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            returned = main(list(args))
        assert returned == code, out.getvalue() + err.getvalue()
        return out.getvalue() + (err.getvalue() if code else "")

    def suspended_run(self, db: str) -> Trace:
        flags = ["--tools", TOOLS, "--context", SECRET_ORDER, "--db", db, "--json"]
        trace = Trace.model_validate_json(self("run", PAYMENT_FLOW, *flags))
        assert trace.status is TraceStatus.SUSPENDED
        return trace


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(tmp_path, monkeypatch)


def as_app(role: str, schema: str) -> psycopg.Connection[tuple[object, ...]]:
    connection = psycopg.connect(as_role(server_dsn(), role), autocommit=True)
    connection.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    return connection


def test_the_application_role_may_read_and_insert_evidence_and_nothing_more(
    cli: Cli, pg_url: str, pg_schema: str, pg_role: str
) -> None:
    first = cli("db", "init", "--db", pg_url, "--app-role", pg_role)
    assert f"app role     {pg_role}: created" in first
    assert "envelopes            yes     yes     -       -       -" in first
    again = cli("db", "init", "--db", pg_url, "--app-role", pg_role)  # converges
    assert f"{pg_role}: exists" in again and again.split("\n")[4:] == first.split("\n")[4:]

    app = as_role(pg_url, pg_role)
    trace = cli.suspended_run(app)
    cli(
        "resume",
        trace.trace_id,
        "--event",
        '{"status": "succeeded"}',
        "--tools",
        TOOLS,
        "--db",
        app,
    )
    with as_app(pg_role, pg_schema) as connection:
        for table in LEDGER_TABLES:
            for statement in (
                f"UPDATE {table} SET {_column(table)} = NULL",
                f"DELETE FROM {table}",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    connection.execute(statement)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                connection.execute(f"TRUNCATE {table}")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                connection.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
    key = cli("pubkey", "--db", app).strip()
    erased = cli("erase", "--subject", "cust-42", "--reason", "GDPR art. 17", "--db", app)
    assert "refs erased  1" in erased
    shown = Trace.model_validate_json(cli("trace", trace.trace_id, "--json", "--db", app))
    assert shown.status is TraceStatus.SUCCESS and shown.context["order_id"] == TOMBSTONE
    assert "result       OK" in cli("verify", "--key", key, "--db", app)
    bundle = str(cli.kek.with_name("proof.json"))
    cli("proof", "--seq", "3", "--out", bundle, "--db", app)
    assert cli("verify-proof", bundle, "--key", key).startswith("OK: envelope seq 3")


def _column(table: str) -> str:
    return {
        "envelopes": "step_id",
        "checkpoints": "note",
        "policies": "body",
        "signing_keys": "added_at",
    }.get(table, "key")


def test_a_database_ledger_needs_its_key_files_and_never_gets_new_ones(
    cli: Cli, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LEDGERFLOW_KEK_FILE")
    refused = cli("run", PAYMENT_FLOW, "--tools", TOOLS, "--db", pg_url, code=2)
    assert "keeps no files beside it" in refused and "--kek FILE" in refused
    monkeypatch.setenv("LEDGERFLOW_KEK_FILE", str(cli.kek))
    cli.suspended_run(pg_url)  # a new ledger: both key files are created
    assert cli.kek.stat().st_mode & 0o777 == 0o600 and cli.signing_key.exists()
    cli.signing_key.unlink()
    refused = cli("trace", "--db", pg_url, "x", code=2)
    assert "refusing to sign with a new key" in refused
    assert not cli.signing_key.exists()


def test_migrate_from_sqlite_to_postgresql_and_back(cli: Cli, tmp_path: Path, pg_url: str) -> None:
    source = str(tmp_path / "ledger.db")
    done = cli.suspended_run(source)
    cli(
        "resume",
        done.trace_id,
        "--event",
        '{"status": "succeeded"}',
        "--tools",
        TOOLS,
        "--db",
        source,
    )
    waiting = cli.suspended_run(source)
    cli("erase", "--subject", "cust-42", "--reason", "request 1", "--db", source)
    kept = cli(
        "run",
        PAYMENT_FLOW,
        "--tools",
        TOOLS,
        "--db",
        source,
        "--json",
        "--context",
        json.dumps({"order_id": {"$secret": "A-77", "subject": "cust-77"}, "amount": 90}),
    )
    kept_trace = Trace.model_validate_json(kept)
    cli("token", "create", "--name", "ci", "--scopes", "read", "--db", source)
    key = cli("pubkey", "--db", source).strip()
    source_kek = str(cli.kek)  # the KEK and signing key files go with the ledger

    report = cli("migrate", "--from", f"sqlite:///{source}", "--to", pg_url, "--kek", source_kek)
    assert "verify       OK" in report and "lf_runs      3 rows" in report
    assert "lf_tokens    1 rows" in report and "secrets      1 rows" in report
    again = cli("migrate", "--from", source, "--to", pg_url, "--kek", source_kek, code=1)
    assert "holds a ledger already" in again

    # The copy is the same ledger: same key, same runs; the live secret still resolves there.
    copy = ["--db", pg_url, "--kek", source_kek, "--signing-key", str(cli.signing_key)]
    assert "result       OK" in cli("verify", "--key", key, "--db", pg_url)
    assert cli("pubkey", *copy).strip() == key
    resumed = cli(
        "resume",
        kept_trace.trace_id,
        "--event",
        '{"status": "succeeded"}',
        "--tools",
        TOOLS,
        "--json",
        *copy,
    )
    assert Trace.model_validate_json(resumed).status is TraceStatus.SUCCESS
    erased = Trace.model_validate_json(cli("trace", waiting.trace_id, "--json", *copy))
    assert erased.context["order_id"] == TOMBSTONE
    assert "ci" in cli("token", "list", "--db", pg_url)

    back = str(tmp_path / "back.db")
    report = cli("migrate", "--from", pg_url, "--to", back, "--kek", source_kek)
    assert "verify       OK" in report
    assert "result       OK" in cli("verify", "--key", key, "--db", back)


def test_migrate_refuses_a_source_in_use_and_a_bad_target(cli: Cli, tmp_path: Path) -> None:
    assert "no ledger at" in cli(
        "migrate", "--from", str(tmp_path / "none.db"), "--to", str(tmp_path / "x.db"), code=1
    )
    source = str(tmp_path / "ledger.db")
    cli.suspended_run(source)
    assert "same database" in cli(
        "migrate", "--from", source, "--to", f"sqlite:///{source}", code=1
    )
    assert "unsupported database URL" in cli(
        "migrate", "--from", source, "--to", "mysql://x/y", code=2
    )


def test_a_schema_of_its_own_per_ledger(cli: Cli, pg_url: str, pg_schema: str) -> None:
    trace = cli.suspended_run(pg_url)
    other = with_schema(server_dsn(), pg_schema + "_other")
    try:
        assert "no run" in cli("trace", trace.trace_id, "--db", other, code=1)
    finally:
        with psycopg.connect(server_dsn(), autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(pg_schema + "_other")
                )
            )
