"""Benchmarks: ``python -m benchmarks.run`` (``make bench``); see README.md in this folder."""
