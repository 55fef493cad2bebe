"""Hand-written runtime that generated MoE runners import: types, kernel binding, reference kernel,
quantizers, dispatch emulators and SGLang's dynamic path (the oracle and benchmark baseline)."""
