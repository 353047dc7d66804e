"""Benchmarks: ``python benchmarks/bench.py --help`` (or ``./dev bench``)."""
