"""The application service and what it stands on: `LedgerflowService` (every entry point's
one path: scopes, policy, access records, secret sealing), the workspace (a ledger and its
vault and keys, opened together), principals, policy rules, the program registry, and a
serving process's maintenance (recovery, timers)."""
