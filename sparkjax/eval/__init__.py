"""Benchmarks that score a model or critic: ProcessBench (first-error identification)."""
