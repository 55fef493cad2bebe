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

Pure and read once, at load: the integration calls `activation_fields` when it builds the config.
"""

from __future__ import annotations

SWIGLU_OAI_ALPHA = 1.702
SWIGLU_OAI_BETA = 1.0


def swiglu_oai_limit(
    activation: str,
    is_gated: bool,
    alpha: float | None,
    beta: float | None,
    clamp_limit: float | None,
    *,
    gfx95: bool,
) -> float | None:
    """The clamp limit when the layer is SwiGLU-OAI that AITER runs as `Swiglu`, else None."""
    if not gfx95 or activation != "silu" or not is_gated:
        return None
    if alpha != SWIGLU_OAI_ALPHA or beta not in (None, SWIGLU_OAI_BETA):
        return None
    return None if clamp_limit is None else float(clamp_limit)


def activation_fields(
    activation: str,
    is_gated: bool,
    alpha: float | None,
    beta: float | None,
    clamp_limit: float | None,
    *,
    gfx95: bool,
) -> dict[str, str | float]:
    """The `MoeLayerConfig` fields (`activation` and its parameters) SGLang 0.5.23's AITER path
    implies for a layer."""
    limit = swiglu_oai_limit(activation, is_gated, alpha, beta, clamp_limit, gfx95=gfx95)
    if limit is not None:
        return {"activation": "swiglu", "swiglu_limit": limit}
    if activation == "situ":
        return {
            "activation": "situ",
            **({} if alpha is None else {"situ_beta": float(alpha)}),
            **({} if clamp_limit is None else {"situ_linear_beta": float(clamp_limit)}),
        }
    return {"activation": activation}
