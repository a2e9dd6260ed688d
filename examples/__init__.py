"""Example programs and tools for the ledgerflow command line."""
