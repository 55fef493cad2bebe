"""A layer's activation as SGLang 0.5.23 hands it to AITER, as `MoeLayerConfig` fields.

SGLang's `MoeRunnerConfig` carries `activation`, `is_gated`, `gemm1_alpha`, `gemm1_beta` and
`gemm1_clamp_limit` (layers/moe/moe_runner/base.py:54-65). Its AITER runner
(layers/moe/moe_runner/aiter.py) reads two special cases from them:

- SwiGLU-OAI (`aiter_swiglu_oai_limit`, aiter.py:119-131): on gfx95, a gated `silu` layer with
  `gemm1_alpha == 1.702`, `gemm1_beta` None or 1.0 and a clamp limit is exactly AITER's `Swiglu`
  (alpha and the `up + 1` bias baked in), run with `swiglu_limit = gemm1_clamp_limit`
  (`_aiter_activation`, aiter.py:134-139; unquant.py:1329 passes the limit);
- situ (aiter.py:218-225): `Situv2`, with `beta = gemm1_alpha` and `linear_beta =
  gemm1_clamp_limit` when set; unset, SGLang passes neither and AITER reads 1.0, and the config
  field stays None so that the runner passes neither either.

Pure and read once, at load: the integration builds a `RunnerActivation` from the runner config
and takes its `config_fields()` when it builds the `MoeLayerConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

SWIGLU_OAI_ALPHA = 1.702
SWIGLU_OAI_BETA = 1.0


@dataclass(frozen=True, slots=True)
class RunnerActivation:
    """The activation fields of a layer's `MoeRunnerConfig`, and whether the GPU is gfx95 (the
    SwiGLU-OAI special case is gfx95's only)."""

    activation: str
    is_gated: bool
    alpha: float | None  # gemm1_alpha
    beta: float | None  # gemm1_beta
    clamp_limit: float | None  # gemm1_clamp_limit
    gfx95: bool

    def swiglu_oai_limit(self) -> float | None:
        """The clamp limit when the layer is SwiGLU-OAI that AITER runs as `Swiglu`, else None."""
        if not self.gfx95 or self.activation != "silu" or not self.is_gated:
            return None
        if self.alpha != SWIGLU_OAI_ALPHA or self.beta not in (None, SWIGLU_OAI_BETA):
            return None
        return None if self.clamp_limit is None else float(self.clamp_limit)

    def config_fields(self) -> dict[str, str | float]:
        """The `MoeLayerConfig` fields (`activation` and its parameters) SGLang 0.5.23's AITER
        path implies for the layer."""
        limit = self.swiglu_oai_limit()
        if limit is not None:
            return {"activation": "swiglu", "swiglu_limit": limit}
        if self.activation == "situ":
            # Unset, a parameter stays out, so that the runner passes AITER neither (as SGLang).
            fields: dict[str, str | float] = {"activation": "situ"}
            if self.alpha is not None:
                fields["situ_beta"] = float(self.alpha)
            if self.clamp_limit is not None:
                fields["situ_linear_beta"] = float(self.clamp_limit)
            return fields
        return {"activation": self.activation}
