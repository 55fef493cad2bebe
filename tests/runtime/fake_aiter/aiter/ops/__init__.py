"""Fake `aiter.ops`."""
