"""Side-by-side training benchmarks: `python -m benchmarks` (full) or `python -m benchmarks --quick`."""
