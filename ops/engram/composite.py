"""Engram as a MindSpore composite: graph-mode friendly, differentiable by autodiff (the table gradient is the
scatter-add of the gather). Gate statistics are float32 as in the reference."""
import math

import mindspore as ms
from mindspore import ops

from ..common import rsqrt
from .reference import CLAMP


def engram_lookup(table, ids):
    e = ops.gather(table, ids, 0)                               # [..., C, d]
    return e.reshape(ids.shape[:-1] + (ids.shape[-1] * table.shape[-1],))


def engram_gate(h, kv, q_weight, k_weight, alive, eps=1e-20):
    hc, D = h.shape[-2], h.shape[-1]
    hf = ops.cast(h, ms.float32)
    kvf = ops.cast(kv, ms.float32)
    key = kvf[..., :hc * D].reshape(kvf.shape[:-1] + (hc, D))
    value = kvf[..., hc * D:]
    w = ops.cast(q_weight, ms.float32) * ops.cast(k_weight, ms.float32)
    rh = rsqrt(ops.mean(hf * hf, -1) + eps)
    rk = rsqrt(ops.mean(key * key, -1) + eps)
    dot = ops.sum(hf * w * key, -1) * rh * rk * (1.0 / math.sqrt(D))
    mag = ops.sqrt(ops.maximum(ops.abs(dot), CLAMP))
    # copysign(mag, dot) with IEEE −0 → negative (1/−0 = −inf); MindSpore's CPU copysign treats −0 as positive
    g = ops.sigmoid(ops.where(ops.reciprocal(dot) < 0, -mag, mag))
    g = g * ops.expand_dims(ops.cast(alive, ms.float32), -1)
    out = hf + ops.expand_dims(g, -1) * ops.expand_dims(value, -2)
    return ops.cast(out, h.dtype)


def engram_dequant(rows, scales):
    g = rows.shape[-1] // scales.shape[-1]
    r = ops.cast(rows, ms.float32).reshape(scales.shape + (g,))
    return (r * ops.expand_dims(ops.cast(scales, ms.float32), -1)).reshape(rows.shape)
