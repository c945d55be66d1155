"""Test infrastructure shared by the suite and the benchmarks: real Prefect servers and seeders.

Never imported by ``src/``.
"""
