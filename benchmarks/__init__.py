"""Benchmarks (not part of the installed package): speed and memory against PyTorch eager."""
