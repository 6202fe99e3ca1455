"""Benchmark harness: official on-disk formats in, official scores out, resumable and batched."""
