"""Hybrid Newton–Schulz in float64 NumPy (docs/training.md): the reference every backend is graded against."""
import numpy as np

# 8 fast-converging quintic steps, then 2 steps that settle the singular values at 1.
NS_COEFFS = ((3.4445, -4.7750, 2.0315),) * 8 + ((2.0, -1.5, 0.5),) * 2
NS_EPS = 1e-7


def newton_schulz(x, coeffs=NS_COEFFS, eps=NS_EPS, bf16=False):
    """x [k, r, c] -> [k, r, c]: per matrix X (transposed when r > c) / (||X||_F + eps), then per (a, b, c):
    A = X Xᵀ, X = a X + (b A + c A²) X. `bf16` is accepted for signature parity and ignored (float64)."""
    x = np.asarray(x, np.float64)
    if x.ndim != 3:
        raise ValueError(f"newton_schulz expects [k, rows, cols], got shape {x.shape}")
    tall = x.shape[1] > x.shape[2]
    if tall:
        x = np.swapaxes(x, 1, 2)
    x = x / (np.sqrt(np.sum(x * x, axis=(1, 2), keepdims=True)) + eps)
    for a, b, c in coeffs:
        A = x @ np.swapaxes(x, 1, 2)
        x = a * x + (b * A + c * (A @ A)) @ x
    return np.swapaxes(x, 1, 2) if tall else x
