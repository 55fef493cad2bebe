"""Fake `aiter.ops.flydsl`."""
