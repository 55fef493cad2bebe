"""Fake `aiter.utility.dtypes`: fp8 as on gfx950; tests set it to e4m3fnuz to act as gfx942."""

from __future__ import annotations

import torch

fp8 = torch.float8_e4m3fn
