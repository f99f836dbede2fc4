"""Small MindSpore building blocks shared by the composite backends."""
import contextlib

import mindspore as ms
from mindspore import ops

from .registry import pinned, target

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


# ------------------------------------------------------------------------ primitive formulations
# Every composite reaches rsqrt / ceil / cumsum / segment sums through the functions below, which pick one of two
# formulations of the same formula: "native" (MindSpore's own primitives, the default) or "onnx" (only primitives
# MindSpore 2.10's ONNX exporter converts: it has no converter for Rsqrt, Ceil, CumSum, UnsortedSegmentSum,
# Reciprocal, BitwiseAnd/Or). The choice is read when a graph is compiled, so `formulation("onnx")` around building
# and exporting a model changes that graph only. docs/porting.md lists what `export --format onnx` needs.
FORMULATIONS = ("native", "onnx")
_FORMULATION = ["native"]


@contextlib.contextmanager
def formulation(name: str):
    """Compile graphs with the `name` formulation of the primitives below while the block runs."""
    if name not in FORMULATIONS:
        raise ValueError(f"formulation must be one of {FORMULATIONS}, got {name!r}")
    old = _FORMULATION[0]
    _FORMULATION[0] = name
    try:
        yield
    finally:
        _FORMULATION[0] = old


def rsqrt(v):
    """1/sqrt(v)."""
    if _FORMULATION[0] == "onnx":
        return ops.div(ops.ones_like(v), ops.sqrt(v))
    return ops.rsqrt(v)


def ceil(x):
    """Smallest integer >= x (float)."""
    if _FORMULATION[0] == "onnx":
        r = ops.round(x)
        return ops.where(r < x, r + 1.0, r)
    return ops.ceil(x)


def cumsum(x, axis):
    """Inclusive prefix sum along `axis`. onnx: a matmul with the upper-triangular ones matrix (exact for the
    integer counts the composites sum, < 2^24; O(n^2) memory, so only for exported static graphs)."""
    if _FORMULATION[0] != "onnx":
        return ops.cumsum(x, axis)
    n = x.shape[axis]
    r = ops.arange(n)
    tri = ops.cast(r.reshape(n, 1) <= r.reshape(1, n), ms.float32)           # tri[i, j] = i <= j
    last = axis in (-1, len(x.shape) - 1)
    xf = ops.cast(x if last else x.swapaxes(axis, -1), ms.float32)
    if len(x.shape) == 1:
        y = ops.matmul(xf.reshape(1, n), tri).reshape(n)
    else:
        y = ops.matmul(xf, tri)
    return ops.cast(y if last else y.swapaxes(axis, -1), x.dtype)


def segment_sum(x, seg, n):
    """Rows of x [N, D] summed into n segments by seg [N] in [0, n) (unsorted_segment_sum; the composites send
    dropped rows to a spare last segment). onnx: one_hot(seg)ᵀ · x."""
    if _FORMULATION[0] != "onnx":
        return ops.unsorted_segment_sum(x, seg, n)
    onehot = ops.one_hot(seg, n, ops.ones((), x.dtype), ops.zeros((), x.dtype))       # [N, n]
    return ops.matmul(onehot.swapaxes(0, 1), x)


@ops.constexpr
def _on_cpu():
    """True when the kernels run on the host CPU (the CPU backend, or the emulated Ascend resolution); a
    compile-time constant (graph mode must not trace target(): it may ask MindSpore's context)."""
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


# The one-pass C++ RMS norm (ops/attention/cpu/rms_norm.cc, forward and backward one kernel each), installed by
# ops/attention/cpp.py when its library is built; used for float32 on CPU with the native formulation.
_CPU_RMS_NORM = None


def use_cpu_rms_norm(fn):
    """Install fn(x, weight or None, eps) as the CPU float32 RMS norm (ops/attention/cpp.py does, at import)."""
    global _CPU_RMS_NORM
    _CPU_RMS_NORM = fn


@ops.constexpr
def _cpp_rms_norm_allowed():
    """The C++ RMS norm is a CPU-local Custom op: a pin of "rms_norm" (or "*") to another backend, e.g. the
    portable composite graph `export` builds, keeps it out (read when the graph is compiled)."""
    return pinned("rms_norm") in (None, "cpp")


def rms_norm(x, weight, eps):
    """x · rsqrt(mean(x², -1) + eps) (· weight), computed in float32, returned in x's dtype."""
    if _CPU_RMS_NORM is not None and _FORMULATION[0] == "native" and _on_cpu() and _cpp_rms_norm_allowed() and \
            x.dtype == ms.float32 and (weight is None or weight.dtype == ms.float32):
        return _CPU_RMS_NORM(x, weight, eps)
    xf = ops.cast(x, ms.float32)
    y = xf * rsqrt(mean_square(xf) + eps)
    if weight is not None:
        y = y * weight
    return ops.cast(y, x.dtype)
