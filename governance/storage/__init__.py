"""Where the governance ledger and the operational tables are stored.

    ledger_port         LedgerStore, the port the Ledger writes through, and its row types
    sql_ledger          SqlLedgerStore: every read and write the two ledger stores share
    sqlite_ledger       the SQLite ledger store (one WAL file; triggers keep it append-only)
    postgres_ledger     the PostgreSQL ledger store (shared by instances; advisory head lock)
    database            the SQL layer under the operational tables, and its SQLite side
    postgres_database   PostgreSQL pools and the same SQL layer over them
    operational_tables  base of the groups of tables outside the chain (runs, programs, tokens)
    database_url        DatabaseUrl: a SQLite path, sqlite:///PATH or postgresql://...
    connect             the ledger store or operational database for a URL

Everything PostgreSQL is imported only when a postgresql:// URL is used (asyncpg is the
`postgres` extra).
"""
