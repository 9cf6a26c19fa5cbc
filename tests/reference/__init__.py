"""Oracles: independent re-creations of the reference systems, used by tests and benchmarks to
check kanitts against what the reference produces, never by kanitts itself."""
