"""Benchmark harness: direct vs oshu-sidecar vs mitmproxy vs proxy.py, one run, one upstream."""
