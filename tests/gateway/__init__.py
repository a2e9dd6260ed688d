"""Tests of the gateway: the command line."""
