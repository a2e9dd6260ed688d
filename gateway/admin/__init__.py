"""Database administration: `db init` (tables and grants) and `migrate` (a verified copy of a
ledger into another database)."""
