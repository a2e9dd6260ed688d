"""Where a ledger lives: a SQLite file or a PostgreSQL database, named by one string.

    ledger.db, ./dir/ledger.db           a SQLite file (any text without "://")
    sqlite:///ledger.db                  the same, as a URL (relative path after three slashes;
    sqlite:////var/lib/ledger.db         four for an absolute one, as SQLAlchemy spells them)
    postgresql://user@host:5432/dbname   a PostgreSQL database (postgres:// too), with any
                                         parameter libpq reads (sslmode=require, ...)
    postgresql://...?schema=name         ...and the ledger's tables in schema `name`
                                         (default: the connection's search_path, i.e. public)

`schema` is ledgerflow's own parameter: it is taken out of the DSN handed to the drivers.
`str(url)` never shows a password, so a URL can go into a message or a log.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from governance.errors import LedgerError
from governance.storage.database import Dialect

_SCHEMA = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_POSTGRES_SCHEMES = ("postgresql", "postgres")


class DatabaseUrlError(LedgerError, ValueError):
    """A --db value that names no database ledgerflow can use."""


@dataclass(frozen=True, slots=True)
class DatabaseUrl:
    dialect: Dialect
    path: Path | None = None  # sqlite
    dsn: str | None = None  # postgresql, without `schema`
    schema: str | None = None

    @classmethod
    def parse(cls, text: str | Path) -> DatabaseUrl:
        if isinstance(text, Path):
            return cls("sqlite", path=text)
        if "://" not in text:
            if not text.strip():
                raise DatabaseUrlError("the database is empty: give a file path or a URL")
            return cls("sqlite", path=Path(text))
        scheme, _, rest = text.partition("://")
        scheme = scheme.lower()
        if scheme == "sqlite":
            if not rest.startswith("/") or rest == "/":
                raise DatabaseUrlError(
                    f"{text!r}: a SQLite URL is sqlite:///PATH (three slashes, then the path)"
                )
            return cls("sqlite", path=Path(rest[1:]))
        if scheme in _POSTGRES_SCHEMES:
            return cls._postgres(text)
        raise DatabaseUrlError(
            f"unsupported database URL scheme {scheme!r}: use a SQLite path, sqlite:///PATH "
            "or postgresql://USER@HOST/DBNAME"
        )

    @classmethod
    def _postgres(cls, text: str) -> DatabaseUrl:
        parts = urllib.parse.urlsplit(text)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        schemas = [value for key, value in query if key == "schema"]
        if len(schemas) > 1:
            raise DatabaseUrlError(f"{_redacted(text)}: give the schema parameter once")
        schema = schemas[0] if schemas else None
        if schema is not None and not _SCHEMA.fullmatch(schema):
            raise DatabaseUrlError(
                f"{_redacted(text)}: schema {schema!r} is not an identifier "
                "(letters, digits and _, at most 63, not starting with a digit)"
            )
        if not parts.path.strip("/"):
            raise DatabaseUrlError(
                f"{_redacted(text)}: name the database (postgresql://USER@HOST/DBNAME)"
            )
        kept = urllib.parse.urlencode([(k, v) for k, v in query if k != "schema"])
        dsn = urllib.parse.urlunsplit(parts._replace(query=kept))
        return cls("postgresql", dsn=dsn, schema=schema)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def database_name(self) -> str:
        """The file stem, or the PostgreSQL database name (with its schema): for origins."""
        if self.path is not None:
            return self.path.stem
        assert self.dsn is not None
        name = urllib.parse.unquote(urllib.parse.urlsplit(self.dsn).path.strip("/"))
        return name if self.schema is None else f"{name}.{self.schema}"

    def __str__(self) -> str:
        if self.path is not None:
            return str(self.path)
        assert self.dsn is not None
        shown = _redacted(self.dsn)
        if self.schema is None:
            return shown
        return f"{shown}{'&' if '?' in shown else '?'}schema={self.schema}"


def _redacted(dsn: str) -> str:
    """The DSN with any password (in the netloc or a password= parameter) replaced by ***."""
    parts = urllib.parse.urlsplit(dsn)
    netloc = parts.netloc
    if "@" in netloc:
        credentials, _, host = netloc.rpartition("@")
        user, colon, _ = credentials.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{host}"
    query = [
        (k, "***" if k == "password" else v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urllib.parse.urlunsplit(
        parts._replace(netloc=netloc, query=urllib.parse.urlencode(query, safe="*"))
    )
