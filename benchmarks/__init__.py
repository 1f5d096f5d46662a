"""Benchmarks that print JSON; part of the repository, not of the installed package."""
