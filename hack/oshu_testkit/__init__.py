"""The test kit: helpers for tests, the demo and the benchmarks; never part of the product (hack/ only)."""
