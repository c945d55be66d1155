"""Benchmark contenders: each a script run as its own process by ``bench.bench_pull``."""
