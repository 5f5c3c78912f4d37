"""Benchmarks: ``fastgen bench`` (cli.py), offline/online runs, the floor, and the transformers peer."""
from .cli import run_bench

__all__ = ["run_bench"]
