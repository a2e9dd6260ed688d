"""`ledgerflow db init` (tables and grants) and `ledgerflow migrate` (copy a ledger to another
database, verified)."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.admin.db_init import PRIVILEGES, InitReport, init_database
from gateway.admin.migration import MigrationReport, migrate
from gateway.cli.common import (
    add_db_option,
    aligned,
    db_path,
    db_url,
    field,
    run_async,
)
from gateway.cli.errors import EXIT_FAILED, EXIT_OK, CommandError, UsageError

_INIT_EPILOG = """\
example (as the owner role, once per database or schema):
  ledgerflow db init --db 'postgresql://owner@db-host/ledger?schema=lf' \\
      --app-role ledgerflow_app --kek /etc/ledgerflow/kek --signing-key /etc/ledgerflow/signing-key
then every instance connects as the application role:
  ledgerflow serve --transport http --db 'postgresql://ledgerflow_app@db-host/ledger?schema=lf' ...
"""


def add_commands(commands: Any) -> None:
    db = commands.add_parser(
        "db",
        help="create a ledger's tables and (PostgreSQL) its application role's grants",
        description="Administer the database a ledger lives in.",
    )
    actions = db.add_subparsers(title="actions", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init",
        help="create every table (and the key files), grant the application role",
        description="Create or migrate every table of the ledger, its run index, saved "
        "programs, tokens and key store; create the KEK and signing key files if the ledger "
        "is new. With --app-role (PostgreSQL), create that login role if missing and grant it "
        "SELECT and INSERT on the ledger's tables, and nothing more there, so no instance can "
        "UPDATE, DELETE or TRUNCATE evidence.",
        epilog=_INIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument(
        "--app-role",
        dest="app_role",
        metavar="ROLE",
        help="PostgreSQL: the role the gateway instances connect as",
    )
    add_db_option(init)
    init.set_defaults(handler=cmd_db_init)

    copy = commands.add_parser(
        "migrate",
        help="copy a ledger into another database and verify the copy",
        description="Copy the ledger at --from (its chain, checkpoints, policies, run index, "
        "saved programs, tokens and vault) into the empty database --to, then audit the copy. "
        "Stop every instance writing to the source first.",
        epilog="example:\n  ledgerflow migrate --from sqlite:///ledger.db "
        "--to 'postgresql://owner@db-host/ledger?schema=lf' --kek ledger.db.kek",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    copy.add_argument("--from", dest="source", required=True, metavar="PATH|URL")
    copy.add_argument("--to", dest="target", required=True, metavar="PATH|URL")
    copy.add_argument(
        "--kek",
        metavar="FILE",
        help="the vault's KEK (default: $LEDGERFLOW_KEK, else the source's PATH.kek)",
    )
    copy.add_argument(
        "--from-keys", dest="source_keys", metavar="FILE", help="SQLite source: its key store"
    )
    copy.add_argument(
        "--to-keys", dest="target_keys", metavar="FILE", help="SQLite target: its key store"
    )
    copy.set_defaults(handler=cmd_migrate)


def cmd_db_init(args: argparse.Namespace) -> int:
    url = db_url(db_path(args))
    try:
        report = run_async(
            init_database(
                url,
                app_role=args.app_role,
                kek_path=args.kek,
                signing_key_path=args.signing_key,
                keys_path=args.keys,
            )
        )
    except CommandError as exc:
        raise UsageError(f"cannot initialise {url}: {exc}") from None
    _print_init(report)
    return EXIT_OK


def _print_init(report: InitReport) -> None:
    print(field("ledger", report.where))
    print(field("tables", "created or up to date"))
    print(field("verifier key", report.verifier_key))
    if report.role is None:
        return
    made = "created (LOGIN; set its password with ALTER ROLE)" if report.created_role else "exists"
    print(field("app role", f"{report.role}: {made}"))
    print()
    header = ["table", *PRIVILEGES]
    rows = [
        [table, *("yes" if held[p] else "-" for p in PRIVILEGES)]
        for table, held in report.privileges
    ]
    for line in aligned([header, *rows]):
        print(line)


def cmd_migrate(args: argparse.Namespace) -> int:
    source, target = db_url(args.source), db_url(args.target)
    try:
        report = run_async(
            migrate(
                source,
                target,
                kek_path=args.kek,
                source_keys=args.source_keys,
                target_keys=args.target_keys,
            )
        )
    except CommandError as exc:
        raise CommandError(f"migration failed: {exc}") from None
    return _print_migration(report)


def _print_migration(report: MigrationReport) -> int:
    print(field("from", report.source))
    print(field("to", report.target))
    print(field("envelopes", report.envelopes))
    print(field("checkpoints", report.checkpoints))
    print(field("policies", report.policies))
    print(field("keys", report.keys))
    for table, count in {**report.rows, **report.vault_rows}.items():
        print(field(table, f"{count} rows"))
    audit = report.audit
    assert audit is not None
    if audit.ok:
        print(
            field(
                "verify",
                f"OK ({audit.entries_checked} entries, "
                f"{audit.checkpoints_checked} checkpoints, with the ledger's keys)",
            )
        )
        return EXIT_OK
    where = "" if audit.first_bad_seq is None else f" at seq {audit.first_bad_seq}"
    print(field("verify", f"FAILED{where}: {audit.reason}"))
    return EXIT_FAILED
