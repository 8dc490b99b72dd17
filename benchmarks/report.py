"""Regenerate benchmarks/RESULTS.md and the PNG plots from benchmarks/results/*.jsonl."""

import sys

from fastmae.bench.report import main

if __name__ == "__main__":
    sys.exit(main())
