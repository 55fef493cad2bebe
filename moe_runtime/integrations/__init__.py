"""Adapters that put the generated runners inside serving frameworks; each imports its framework
only when it is itself imported (`moe_runtime.integrations.sglang` needs SGLang installed)."""
