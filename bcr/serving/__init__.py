"""Serving track: deterministic workloads (token traces) shared by the cache benchmark and server runs."""
