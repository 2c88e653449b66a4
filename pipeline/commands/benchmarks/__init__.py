"""Benchmarks: `clipblind bench <name>` measures a stage against a baseline in one run.

Timings on a shared machine are noisy, so every benchmark reports ratios measured in the
same run (against a baseline implementation or the machine's own matmul rate).
"""
