"""Parity cases of the Engram family: V4.1-tiny and V4.1-Flash widths (hc 4, D 5120, 24 columns of 256), dead
tokens, large and tiny gate logits (both branches of the signed square root), bf16 inputs."""
import numpy as np

from ..parity import Case

HC = 4


def _lookup_inputs(T, rows, C, d):
    def make(rng):
        return (rng.standard_normal((rows, d)), rng.integers(0, rows, (T, C))), {}
    return make


def _gate_inputs(T, D, key_scale=1.0, dead=()):
    def make(rng):
        h = rng.standard_normal((T, HC, D))
        kv = rng.standard_normal((T, (HC + 1) * D)) * key_scale
        alive = np.ones(T)
        alive[list(dead)] = 0.0
        return (h, kv, 1 + 0.3 * rng.standard_normal((HC, D)), 1 + 0.3 * rng.standard_normal((HC, D)), alive), \
            {"eps": 1e-20}
    return make


def _dequant_inputs(T, C, d, g):
    def make(rng):
        return (rng.integers(-127, 128, (T, C * d)), rng.random((T, C * d // g)) * 0.02), {}
    return make


CASES = [
    Case("engram_dequant", "T5_C6_d32", _dequant_inputs(5, 6, 32, 32), int_args=(0,)),
    Case("engram_dequant", "T3_C24_d256", _dequant_inputs(3, 24, 256, 32), int_args=(0,)),
    Case("engram_lookup", "T5_C6_d16", _lookup_inputs(5, 97, 6, 16), grad_args=(0,), int_args=(1,)),
    Case("engram_lookup", "T3_C24_d256", _lookup_inputs(3, 4099, 24, 256), grad_args=(0,), int_args=(1,)),
    Case("engram_lookup", "repeated_rows", _lookup_inputs(64, 7, 6, 8), grad_args=(0,), int_args=(1,)),
    Case("engram_gate", "T7_D64", _gate_inputs(7, 64), grad_args=(0, 1, 2, 3)),
    Case("engram_gate", "T2_D5120", _gate_inputs(2, 5120), grad_args=(0, 1, 2, 3), tol_scale=4),
    Case("engram_gate", "dead_tokens", _gate_inputs(6, 32, dead=(1, 4)), grad_args=(0, 1, 2, 3)),
    Case("engram_gate", "large_logits", _gate_inputs(5, 48, key_scale=30.0), grad_args=(0, 1)),
    Case("engram_gate", "bf16_inputs", _gate_inputs(9, 128), grad_args=(0, 1, 2, 3), bf16_inputs=True),
]
