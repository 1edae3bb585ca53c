"""Benchmarks behind the targets in docs/architecture.md; run each as `python -m bench.<name> --help`.

Every script measures both sides in one run, interleaved, and prints them with their ratio;
results and the machine they ran on are recorded in BENCHMARKS.md.
"""
