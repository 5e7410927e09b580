"""Benchmarks of copilot-chat next to the floor (the mock model called directly) and LiteLLM proxy.

Run `scripts/bench.sh` (or `python -m bench --quick`); docs/benchmarks.md explains what is measured.
"""
