"""The audit console: read-only pages for auditors, served under /audit/."""
