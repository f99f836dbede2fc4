"""Small MindSpore building blocks shared by the composite backends."""
import mindspore as ms
from mindspore import ops

NEG_INF = -1e30   # finite "minus infinity": masked logits stay finite so autodiff never sees inf - inf


def linear(x, w):
    """x [..., in] · wᵀ, w [out, in] (no bias anywhere in V4)."""
    shape = x.shape
    y = ops.matmul(x.reshape(-1, shape[-1]), w.swapaxes(0, 1))
    return y.reshape(shape[:-1] + (w.shape[0],))


def rms_norm(x, weight, eps):
    xf = ops.cast(x, ms.float32)
    y = xf * ops.rsqrt(ops.mean(xf * xf, -1, True) + eps)
    if weight is not None:
        y = y * weight
    return ops.cast(y, x.dtype)
