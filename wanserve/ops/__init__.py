"""Operator tools: the benchmark client and the diagnostics (no torch at import time)."""
