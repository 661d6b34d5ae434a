"""Benchmarks for the enhancer service (issue 4): see benchmarks/README.md."""
