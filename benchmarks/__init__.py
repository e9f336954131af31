"""Speed and memory harness: ``python -m benchmarks.run --suite=cpu|gpu`` (see README.md)."""
