"""Benchmark harness: fastmae against the reference MAE, per op and end to end.

The scripts in ``benchmarks/`` are thin command lines over this package, so ``fastmae bench``
works from an installed package too. Nothing here asserts speed: it measures and records.
"""
