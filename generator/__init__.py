"""Generates one branch-free MoE runner module per (a2a backend, quant method, dispatch format)."""

# Part of every generated file's input hash: bump it when the generator's output logic changes.
__version__ = "0.1.0"
