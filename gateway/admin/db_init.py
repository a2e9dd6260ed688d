"""`ledgerflow db init`: create every table of a ledger, and on PostgreSQL the application
role's grants.

Two roles (PostgreSQL):
- the owner (whoever runs `db init`, e.g. a migration job): owns the tables, the triggers and
  the functions; its credentials belong to no running instance;
- the application role (`--app-role`, the one the gateway instances connect as): may SELECT and
  INSERT the ledger's tables and nothing else on them, so it can neither UPDATE, DELETE nor
  TRUNCATE evidence even if an instance is compromised; may read and write the operational and
  key-store tables (runs change state; an erase deletes key rows).
The owner can still bypass everything (disable the triggers, rewrite rows): that is what the
signed checkpoints and `ledgerflow verify` are for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from gateway.application.program_registry import ProgramRegistry
from gateway.application.witnesses import WitnessStore
from gateway.application.workspace import Workspace, WorkspaceError
from gateway.http.tokens import TokenStore
from governance.runs import RunStore
from governance.storage.database_url import DatabaseUrl
from governance.storage.operational_tables import OperationalTables

Privileges = tuple[str, ...]
PRIVILEGES: Privileges = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
READ: Privileges = ("SELECT",)
APPEND: Privileges = ("SELECT", "INSERT")
CHANGE: Privileges = ("SELECT", "INSERT", "UPDATE", "DELETE")
_GROUPS: tuple[type[OperationalTables], ...] = (RunStore, ProgramRegistry, TokenStore, WitnessStore)


def app_grants() -> list[tuple[str, tuple[str, ...]]]:
    """Every table of a PostgreSQL ledger with what the application role may do on it."""
    from governance.storage.postgres_ledger import LEDGER_TABLES
    from vault.postgres_store import PREFIX

    grants: list[tuple[str, Privileges]] = [
        (table, READ if table == "schema_version" else APPEND) for table in LEDGER_TABLES
    ]
    for group in _GROUPS:
        grants.append((group.VERSION_TABLE, READ))
        grants += [(table, CHANGE) for table in group.TABLES]
    grants += [
        (f"{PREFIX}schema", READ),
        (f"{PREFIX}meta", ("SELECT", "INSERT", "UPDATE")),
        (f"{PREFIX}subjects", CHANGE),
        (f"{PREFIX}secrets", CHANGE),
        (f"{PREFIX}tombstones", APPEND),
    ]
    return grants


@dataclass(frozen=True, slots=True)
class InitReport:
    where: str
    verifier_key: str
    role: str | None  # the application role granted, if any
    created_role: bool
    privileges: list[tuple[str, dict[str, bool]]]  # table -> privilege -> held by the role


async def init_database(
    url: DatabaseUrl,
    *,
    app_role: str | None = None,
    kek_path: str | os.PathLike[str] | None = None,
    signing_key_path: str | os.PathLike[str] | None = None,
    keys_path: str | os.PathLike[str] | None = None,
) -> InitReport:
    """Create (or migrate) every table of the ledger at `url` and, on PostgreSQL, grant
    `app_role` (created as a login role when missing) what an instance needs."""
    if app_role is not None and not url.is_postgres:
        raise WorkspaceError("--app-role is for PostgreSQL ledgers: a SQLite file has no roles")
    async with await Workspace.open(
        url,
        keys_path=keys_path,
        kek_path=kek_path,
        signing_key_path=signing_key_path,
        reader=True,  # no lease, no checkpoint: nothing is recorded
    ) as workspace:
        for group in (ProgramRegistry, TokenStore, WitnessStore):  # run tables: open already
            async with workspace.operational(group):
                pass
        key = workspace.audit_key()
        if app_role is None:
            return InitReport(workspace.where, key, None, False, [])
        created = await _grant(workspace, app_role)
        return InitReport(workspace.where, key, app_role, created, await _held(workspace, app_role))


async def _grant(workspace: Workspace, role: str) -> bool:
    """Create `role` if missing, then set exactly the grants of `app_grants` (revoking first,
    so that running init again converges). True if the role was created."""
    database = workspace.shared_database()
    assert database is not None
    quoted = _identifier(role)
    created = False
    async with database.transaction() as tx:
        if await tx.fetchone("SELECT 1 FROM pg_roles WHERE rolname = ?", (role,)) is None:
            await tx.execute(f"CREATE ROLE {quoted} LOGIN")
            created = True
        schema = await tx.fetchone("SELECT current_schema()")
        assert schema is not None and schema[0] is not None
        await tx.execute(f"GRANT USAGE ON SCHEMA {_identifier(schema[0])} TO {quoted}")
        for table, privileges in app_grants():
            await tx.execute(f"REVOKE ALL ON TABLE {table} FROM {quoted}")
            await tx.execute(f"GRANT {', '.join(privileges)} ON TABLE {table} TO {quoted}")
        await tx.execute(f"GRANT EXECUTE ON FUNCTION lf_ledger_lock() TO {quoted}")
    return created


async def _held(workspace: Workspace, role: str) -> list[tuple[str, dict[str, bool]]]:
    """What `role` may really do on each table, as the server answers it."""
    database = workspace.shared_database()
    assert database is not None
    held = []
    for table, _ in app_grants():
        row = await database.fetchone(
            "SELECT " + ", ".join("has_table_privilege(?, ?, ?)" for _ in PRIVILEGES),
            tuple(value for privilege in PRIVILEGES for value in (role, table, privilege)),
        )
        assert row is not None
        held.append((table, dict(zip(PRIVILEGES, map(bool, row), strict=True))))
    return held


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
