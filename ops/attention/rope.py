"""RoPE tables (with V4's YaRN on compressed layers) and the interleaved-pair rotation, NumPy side.

Pairs (0,1), (2,3), ... of the last `rope_dim` dims are complex numbers (docs/numerics.md, "RoPE").
The tables are float32 as DeepSeek's precompute_freqs_cis computes them: float32 frequencies, the YaRN blend in
float32 in the reference's order, the angle rounded to float32 as f32(p · freq), then cos/sin of that angle.
Past a few thousand positions the float32 angle differs from a float64 one by more than the model's noise
(1.5e-4 at 4K, 3.4e-3 at 64K, 5.5e-2 at 1M), so float64 tables would be a different model.
"""
import math

import numpy as np

_F = np.float32


def rope_freqs(rope_dim, base, original_seq_len=0, factor=1.0, beta_fast=32.0, beta_slow=1.0):
    """Per-pair angular frequencies [rope_dim/2] float32; YaRN interpolation when original_seq_len > 0.

    Step by step as precompute_freqs_cis: freqs = 1 / base^(f32(2i)/dim) (the power rounded once to float32 — GPU
    and CPU libraries' powf agree with this to 1-2 ulp), then with YaRN smooth = 1 - ramp and
    freqs = freqs/factor·(1 - smooth) + freqs·smooth, every operation in float32."""
    expo = np.arange(0, rope_dim, 2, dtype=_F) / _F(rope_dim)
    freqs = _F(1.0) / np.power(float(base), expo.astype(np.float64)).astype(_F)
    if original_seq_len > 0:
        def corr(rot):   # find_correction_dim (python floats, as the reference)
            return rope_dim * math.log(original_seq_len / (rot * 2 * math.pi)) / (2 * math.log(base))
        low = max(math.floor(corr(beta_fast)), 0)
        high = min(math.ceil(corr(beta_slow)), rope_dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(rope_dim // 2, dtype=_F) - _F(low)) / _F(high - low), _F(0), _F(1))
        smooth = _F(1) - ramp
        freqs = freqs / _F(factor) * (_F(1) - smooth) + freqs * smooth
    return freqs.astype(_F)


def rope_table(n_pos, rope_dim, base, original_seq_len=0, factor=1.0, beta_fast=32.0, beta_slow=1.0, start=0):
    """(cos, sin) [n_pos, rope_dim/2] float32 of the float32 angle f32(p · freq) (torch.polar(1, outer(t, freqs)))
    for positions p = start .. start+n_pos-1."""
    ang = np.arange(start, start + n_pos, dtype=_F)[:, None] * rope_freqs(rope_dim, base, original_seq_len, factor, beta_fast,
                                                            beta_slow)[None, :]
    ang = ang.astype(np.float64)   # exact; cos/sin correctly rounded from here
    return np.cos(ang).astype(_F), np.sin(ang).astype(_F)


def layer_rope_table(cfg, ratio, n_pos):
    """(cos, sin) of rope_table for a layer: compressed layers (ratio > 0) use compress_rope_theta with YaRN, the
    window-only layers and MTP the plain rope_theta (the reference's precompute_freqs_cis, per layer). cfg: a
    ModelConfig (read by attribute)."""
    if ratio:
        return rope_table(n_pos, cfg.rope_head_dim, cfg.compress_rope_theta, cfg.original_seq_len, cfg.rope_factor,
                          cfg.beta_fast, cfg.beta_slow)
    return rope_table(n_pos, cfg.rope_head_dim, cfg.rope_theta)


def apply_rope(x, cos, sin, inverse=False):
    """Rotate the last 2*cos.shape[-1] dims of x; cos/sin broadcast against x[..., pairs]."""
    rd = cos.shape[-1] * 2
    x = np.asarray(x, np.float64).copy()
    r = x[..., -rd:].reshape(*x.shape[:-1], rd // 2, 2)
    s = -sin if inverse else sin
    a, b = r[..., 0], r[..., 1]
    x[..., -rd:] = np.stack([a * cos - b * s, a * s + b * cos], axis=-1).reshape(*x.shape[:-1], rd)
    return x
