"""Benchmark of the recall pipeline against the libraries a user would otherwise call directly.

`python -m bench --size reference` (see README, "Benchmark").
"""
