"""Ingest: sources of log lines, the correlator, and the tracking-record store.

Lines flow one way: source -> parsers -> correlator -> store. Nothing here
imports ``server``.
"""
