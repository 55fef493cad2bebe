"""Fake `aiter.utility`."""
