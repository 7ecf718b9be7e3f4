"""Benchmarks of stubby-py, run as modules from the repository root: ``python -m bench.forwarding``.

`bench.harness` holds what they share; see bench/README.md for each one.
"""
