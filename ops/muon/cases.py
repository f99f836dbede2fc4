"""Parity cases of the Muon family: bucket shapes of the tiny/small presets, tall and wide, scale extremes."""
import numpy as np

from ..parity import Case


def _ns_inputs(k, r, c, scales=None, coeffs=None):
    def make(rng):
        x = rng.standard_normal((k, r, c))
        if scales is not None:
            x = x * np.asarray(scales, np.float64)[:, None, None]
        kw = {} if coeffs is None else {"coeffs": coeffs}
        return (x,), kw
    return make


CASES = [
    Case("newton_schulz", "k3_16x48_scales", _ns_inputs(3, 16, 48, scales=[1e-3, 1.0, 50.0])),
    Case("newton_schulz", "k107_32x64_experts", _ns_inputs(107, 32, 64)),
    Case("newton_schulz", "k7_128x32_tall", _ns_inputs(7, 128, 32)),
    Case("newton_schulz", "k2_4x256_hc_head", _ns_inputs(2, 4, 256)),
    Case("newton_schulz", "k1_40x40_square", _ns_inputs(1, 40, 40)),
    Case("newton_schulz", "k1_96x300_multiblock", _ns_inputs(1, 96, 300)),     # columns cross a GEMM block
    Case("newton_schulz", "k4_3x5_tiny", _ns_inputs(4, 3, 5)),
    Case("newton_schulz", "k2_24x256_one_step", _ns_inputs(2, 24, 256, coeffs=((3.4445, -4.7750, 2.0315),))),
]
