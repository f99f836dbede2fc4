"""Newton–Schulz with MindSpore graph ops (any device): 3 batched matmuls + a few elementwise ops per step.

`bf16=True` runs the matmuls in bfloat16 (Ascend; the report: "BF16 matmuls are stable"); the result is
float32. CPU has no bf16 matmul, so the CPU default is float32.
"""
import mindspore as ms
from mindspore import ops

from .reference import NS_COEFFS, NS_EPS


def newton_schulz(x, coeffs=NS_COEFFS, eps=NS_EPS, bf16=False):
    """x [k, r, c] -> float32 [k, r, c], each matrix orthogonalised on its own (see the family docstring)."""
    tall = x.shape[1] > x.shape[2]
    x = ops.cast(x, ms.float32)
    if tall:
        x = ops.swapaxes(x, 1, 2)
    norm = ops.sqrt(ops.sum(x * x, (1, 2), True))
    x = x / (norm + eps)
    if bf16:
        x = ops.cast(x, ms.bfloat16)
    for abc in coeffs:
        gram = ops.bmm(x, ops.swapaxes(x, 1, 2))
        poly = gram * abc[1] + ops.bmm(gram, gram) * abc[2]
        x = x * abc[0] + ops.bmm(poly, x)
    x = ops.cast(x, ms.float32)
    if tall:
        x = ops.swapaxes(x, 1, 2)
    return x
