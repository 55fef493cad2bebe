"""Hypothesis profiles: CI replays a fixed, derandomized set of examples, so a green run stays
green; `HYPOTHESIS_PROFILE=explore` draws fresh examples for a developer hunting bugs."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
