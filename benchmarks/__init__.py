"""Benchmarks of the generated runners against SGLang's dynamic path (see benchmarks/RESULTS.md)."""
