"""Fake `aiter.utility.dtypes`: fp8 as on gfx950."""

from __future__ import annotations

import torch

fp8 = torch.float8_e4m3fn
