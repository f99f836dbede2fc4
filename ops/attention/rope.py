"""RoPE tables (with V4's YaRN on compressed layers) and the interleaved-pair rotation, NumPy side.

Pairs (0,1), (2,3), ... of the last `rope_dim` dims are complex numbers (spec §4.1, gotcha 9).
"""
import math

import numpy as np


def rope_freqs(rope_dim, base, original_seq_len=0, factor=1.0, beta_fast=32.0, beta_slow=1.0):
    """Per-pair angular frequencies [rope_dim/2]; YaRN interpolation when original_seq_len > 0."""
    freqs = 1.0 / (base ** (np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim))
    if original_seq_len > 0:
        def corr(rot):
            return rope_dim * math.log(original_seq_len / (rot * 2 * math.pi)) / (2 * math.log(base))
        low = max(math.floor(corr(beta_fast)), 0)
        high = min(math.ceil(corr(beta_slow)), rope_dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(rope_dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
        freqs = freqs / factor * ramp + freqs * (1.0 - ramp)
    return freqs


def rope_table(n_pos, rope_dim, base, original_seq_len=0, factor=1.0, beta_fast=32.0, beta_slow=1.0):
    """(cos, sin) [n_pos, rope_dim/2] in float64."""
    ang = np.outer(np.arange(n_pos, dtype=np.float64),
                   rope_freqs(rope_dim, base, original_seq_len, factor, beta_fast, beta_slow))
    return np.cos(ang), np.sin(ang)


def apply_rope(x, cos, sin, inverse=False):
    """Rotate the last 2*cos.shape[-1] dims of x; cos/sin broadcast against x[..., pairs]."""
    rd = cos.shape[-1] * 2
    x = np.asarray(x, np.float64).copy()
    r = x[..., -rd:].reshape(*x.shape[:-1], rd // 2, 2)
    s = -sin if inverse else sin
    a, b = r[..., 0], r[..., 1]
    x[..., -rd:] = np.stack([a * cos - b * s, a * s + b * cos], axis=-1).reshape(*x.shape[:-1], rd)
    return x
