"""AITER release numbers, read from a version string once, when a kernel is bound.

AITER tags its releases `v<major>.<minor>.<patch>[.post<n>]` (ROCm/aiter); its wheels report
`0.1.20.post1` or `0.1.20.post1+rocm...`. Load-time gates compare these tuples: `.post1` is a
release of its own (v0.1.16.post1 has fp8 per_1x32 kernels that v0.1.16 lacks).
"""

from __future__ import annotations

import re

Release = tuple[int, int, int, int]

_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)(?:\.post(\d+))?")


def release_of(version: str) -> Release | None:
    """`(major, minor, patch, post)` of an AITER version string, or None if it names none
    (a source build without a version, `(unknown version)`)."""
    match = _VERSION.match(version)
    if match is None:
        return None
    major, minor, patch, post = match.groups()
    return int(major), int(minor), int(patch), int(post or 0)


def tag(release: Release) -> str:
    """The ROCm/aiter tag of a release: `v0.1.16.post1`, `v0.1.14`."""
    major, minor, patch, post = release
    return f"v{major}.{minor}.{patch}" + (f".post{post}" if post else "")
