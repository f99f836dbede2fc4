"""Small MindSpore building blocks shared by the composite backends."""
import mindspore as ms
from mindspore import ops

from .registry import target

NEG_INF = -1e30   # finite "minus infinity": masked logits stay finite so autodiff never sees inf - inf


# MatMul with transpose_b reads w [out, in] as is; matmul(x, w.swapaxes(0, 1)) materialises the transpose first,
# which made every projection ~3x slower on CPU (measured at [256, 256] x [4096, 256]ᵀ: 2.9 ms vs 1.0 ms).
_matmul_nt = ops.MatMul(transpose_b=True)
_matmul = ops.MatMul()


def linear(x, w):
    """x [..., in] · wᵀ, w [out, in] (no bias anywhere in V4)."""
    shape = x.shape
    y = _matmul_nt(x.reshape(-1, shape[-1]), w)
    return y.reshape(shape[:-1] + (w.shape[0],))


def _on_cpu():
    """True when the kernels run on the host CPU (the CPU backend, or the emulated Ascend resolution); evaluated
    once at graph compile time."""
    t = target()
    return t.device != "Ascend" or t.emulated


def mean_square(x):
    """mean(x², -1, keepdim) of float32 x. On CPU as a MatMul against a ones column: MindSpore's CPU ReduceMean
    over the last axis ran at ~0.4 GFLOP/s (10 ms for the [512·8, 512] per-head query norm vs 1.5 ms;
    docs/performance.md). On Ascend the plain reduction, which graph-kernel fusion folds into the norm."""
    d = x.shape[-1]
    if _on_cpu():
        s = _matmul(ops.reshape(x * x, (-1, d)), ops.ones((d, 1), ms.float32))
        return ops.reshape(s, x.shape[:-1] + (1,)) / d
    return ops.mean(x * x, -1, True)


def rms_norm(x, weight, eps):
    xf = ops.cast(x, ms.float32)
    y = xf * ops.rsqrt(mean_square(xf) + eps)
    if weight is not None:
        y = y * weight
    return ops.cast(y, x.dtype)
