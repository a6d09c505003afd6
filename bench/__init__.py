"""Benchmark scripts printing JSON, and the random-weight model builders they (and some tests) share."""
