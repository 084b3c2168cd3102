"""Benchmarks of the project itself (make bench-*); nothing in the product imports them."""
