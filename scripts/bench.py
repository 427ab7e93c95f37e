"""Benchmark normexp's training loop against the conventional torchvision loop (see normexp/bench.py)."""

import sys

from normexp.bench import main

if __name__ == "__main__":
    sys.exit(main())
