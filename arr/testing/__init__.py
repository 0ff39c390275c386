"""Tiny models built in code, shared by tests and benchmarks (no downloads)."""
