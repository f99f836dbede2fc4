"""Parity cases of the mHC family (shapes of a tiny model and of V4-Flash's D=4096, edge inputs)."""
import numpy as np

from ..parity import Case

HC = 4


def _hc_pre_inputs(T, D, logit_scale=1.0, iters=20, norm_eps=1e-6):
    def make(rng):
        x = rng.standard_normal((T, HC, D))
        fn = rng.standard_normal(((2 + HC) * HC, HC * D)) * 0.5
        scale = np.array([0.8, 0.6, 1.2]) * logit_scale
        base = rng.standard_normal((2 + HC) * HC) * 0.3
        return (x, fn, scale, base), {"iters": iters, "hc_eps": 1e-6, "norm_eps": norm_eps}
    return make


def _hc_post_inputs(T, D):
    def make(rng):
        comb = rng.random((T, HC, HC)) + 0.05
        comb /= comb.sum(-1, keepdims=True)
        return (rng.standard_normal((T, D)), rng.standard_normal((T, HC, D)), 2 * rng.random((T, HC)), comb), {}
    return make


def _hc_head_inputs(T, D):
    def make(rng):
        return (rng.standard_normal((T, HC, D)), rng.standard_normal((HC, HC * D)) * 0.5,
                np.array([0.7]), rng.standard_normal(HC) * 0.3), {"hc_eps": 1e-6, "norm_eps": 1e-6}
    return make


CASES = [
    Case("hc_pre", "T1_D64", _hc_pre_inputs(1, 64), grad_args=(0, 1, 2, 3)),
    Case("hc_pre", "T7_D64", _hc_pre_inputs(7, 64), grad_args=(0, 1, 2, 3)),
    Case("hc_pre", "T33_D4096", _hc_pre_inputs(33, 4096), tol_scale=4),
    Case("hc_pre", "extreme_logits", _hc_pre_inputs(5, 32, logit_scale=30.0), grad_args=(0, 3), tol_scale=10),
    Case("hc_pre", "bf16_inputs", _hc_pre_inputs(9, 128), grad_args=(0,), bf16_inputs=True),
    Case("hc_pre", "iters1", _hc_pre_inputs(3, 16, iters=1), grad_args=(0, 1)),
    Case("hc_mixes", "T7_D64_eps1e-20", _hc_pre_inputs(7, 64, norm_eps=1e-20), grad_args=(0, 1, 2, 3)),
    Case("hc_mixes", "T3_D5120", _hc_pre_inputs(3, 5120, norm_eps=1e-20), tol_scale=4),
    Case("hc_post", "T7_D64", _hc_post_inputs(7, 64), grad_args=(0, 1, 2, 3)),
    Case("hc_post", "T33_D4096", _hc_post_inputs(33, 4096), tol_scale=4),
    Case("hc_head", "T7_D64", _hc_head_inputs(7, 64), grad_args=(0, 1, 2, 3)),
    Case("hc_head", "T5_D4096", _hc_head_inputs(5, 4096), tol_scale=4),
    # Edge shapes for the compiled backends: one token, ragged D (SIMD tails), many tokens (thread split and the
    # token-reduction of the fn gradient), V4-Pro width, bf16-representable inputs everywhere.
    Case("hc_pre", "T2_D4096_grad", _hc_pre_inputs(2, 4096), grad_args=(0, 1, 2, 3), tol_scale=4),
    Case("hc_pre", "T11_D45_ragged", _hc_pre_inputs(11, 45), grad_args=(0, 1, 2, 3)),
    Case("hc_pre", "T4096_D16_large_T", _hc_pre_inputs(4096, 16), grad_args=(0, 1, 2, 3), tol_scale=4),
    Case("hc_post", "T1_D64", _hc_post_inputs(1, 64), grad_args=(0, 1, 2, 3)),
    Case("hc_post", "T11_D45_ragged", _hc_post_inputs(11, 45), grad_args=(0, 1, 2, 3)),
    Case("hc_post", "T4096_D16_large_T", _hc_post_inputs(4096, 16), grad_args=(0, 1, 2, 3)),
    Case("hc_post", "T3_D7168", _hc_post_inputs(3, 7168), tol_scale=4),
    Case("hc_post", "bf16_inputs", _hc_post_inputs(9, 128), grad_args=(0, 1, 2, 3), bf16_inputs=True),
    Case("hc_head", "T1_D64", _hc_head_inputs(1, 64), grad_args=(0, 1, 2, 3)),
    Case("hc_head", "T11_D45_ragged", _hc_head_inputs(11, 45), grad_args=(0, 1, 2, 3)),
    Case("hc_head", "bf16_inputs", _hc_head_inputs(9, 128), grad_args=(0, 1, 2, 3), bf16_inputs=True),
]
