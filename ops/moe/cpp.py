"""MoE `cpp` backend: the C++ kernels of ops/moe/cpu/moe_kernels.cc as MindSpore `ops.Custom(func_type="aot")` ops.

Every forward op carries a `bprop` that calls the matching C++ gradient kernel, so the ops train under
`ms.grad`/`value_and_grad` in PyNative, `ms.jit` and GRAPH_MODE. Custom primitives are created once per static
configuration (lru_cache; graph mode evaluates the cache lookup at compile time). Static scalars travel as
small params tensors, optional inputs as 1-element dummies (flags in params).

Semantics are those of reference.py; float math is float32 (router included, whatever the input dtype).
"""
from __future__ import annotations

import functools
import os

import mindspore as ms
from mindspore import ops

from ..build import library_path
from ..common import linear
from . import reference

LIB = library_path("moe")


def available() -> bool:
    return os.path.exists(LIB)


def _custom(name, out_shape, out_dtype, bprop=None, cfg=()):
    prim = ops.Custom(f"{LIB}:{name}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot", bprop=bprop)
    # MindSpore caches shape inference per (function, attributes): without a config attribute, a second
    # primitive of the same kernel with another static config (k, capacity, ...) would reuse the first's shapes.
    prim.add_prim_attr("moe_cfg", repr(tuple(cfg)))
    return prim


def _f32(x):
    return x if x.dtype == ms.float32 else ops.cast(x, ms.float32)      # no copy of float32 weights


def _dummy_f():
    return ops.zeros((1,), ms.float32)


def _dummy_i(shape=(1,)):
    return ops.zeros(shape, ms.int32)


# ------------------------------------------------------------------------------------------------ gating
@functools.lru_cache(None)
def _gating(k):
    grad = _custom("MoeGatingTopKGrad", lambda l, i, p, dy, ds: l, lambda l, i, p, dy, ds: ms.float32)

    def bprop(logits, bias, params, ids_in, table, out, dout):
        dl = grad(logits, out[1], params, dout[0], dout[2])
        return dl, ops.zeros_like(bias), ops.zeros_like(params), ops.zeros_like(ids_in), ops.zeros_like(table)

    return _custom("MoeGatingTopK", lambda l, b, p, i, t: ([l[0], k], [l[0], k], l),
                   lambda l, b, p, i, t: (ms.float32, ms.int32, ms.float32), bprop, cfg=(k,))


def moe_gating_topk(x, bias=None, k=6, k_group=1, group_count=1, group_select_mode=0, renorm=0, norm_type=2,
                    out_flag=True, routed_scaling_factor=1.0, eps=1e-20, input_ids=None, tid2eid=None):
    if renorm != 0:
        raise ValueError("only renorm=0 is implemented")
    nt = reference.norm_type_id(norm_type)
    hashed = tid2eid is not None
    has_bias = bias is not None and not hashed
    params = ms.Tensor([float(k_group), float(group_count), float(group_select_mode), float(nt),
                        float(routed_scaling_factor), float(eps), 1.0 if has_bias else 0.0, 1.0 if hashed else 0.0],
                       ms.float32)
    b = _f32(bias) if has_bias else _dummy_f()
    ids_in = ops.cast(input_ids.reshape(-1), ms.int32) if hashed else _dummy_i()
    table = ops.cast(tid2eid, ms.int32) if hashed else _dummy_i((1, 1))
    return _gating(k)(_f32(x), b, params, ids_in, table)


def moe_route(x, gate_w, bias, topk, route_scale, score_func="sqrtsoftplus", input_ids=None, tid2eid=None,
              gate_temp=1.0, eps=0.0):
    logits = linear(_f32(x), _f32(gate_w))             # router GEMM in float32 (MindSpore matmul, autodiff)
    if gate_temp != 1.0:                                 # DeepSeek-V4.1's router temperature
        logits = logits / gate_temp
    y, ids, _ = moe_gating_topk(logits, bias, topk, norm_type=score_func, routed_scaling_factor=route_scale,
                                eps=eps, input_ids=input_ids, tid2eid=tid2eid)
    return y, ids


# ------------------------------------------------------------------------------------------------ init routing
@functools.lru_cache(None)
def _init_routing(active_num, capacity, num_experts, drop_pad):
    grad = _custom("MoeInitRoutingGrad", lambda g, r, x: x, lambda g, r, x: ms.float32)

    def shape(xs, ids, ps):
        n = ids[0] * ids[1]
        expanded = [num_experts, capacity, xs[1]] if drop_pad else \
            [min(active_num, n) if active_num > 0 else n, xs[1]]
        return expanded, [n], [num_experts], [num_experts]

    def bprop(x, ids, params, out, dout):
        return grad(_f32(dout[0]), out[1], x), ops.zeros_like(ids), ops.zeros_like(params)

    return _custom("MoeInitRouting", shape, lambda xd, idd, pd: (xd, ms.int32, ms.int32, ms.int32), bprop,
                   cfg=(active_num, capacity, num_experts, drop_pad))


def moe_init_routing(x, expert_idx, active_num=0, expert_capacity=0, expert_num=0, drop_pad_mode=0,
                     expert_tokens_count_or_cumsum_flag=1, expert_tokens_before_capacity_flag=True):
    params = ms.Tensor([int(drop_pad_mode), int(expert_tokens_count_or_cumsum_flag)], ms.int32)
    prim = _init_routing(int(active_num), int(expert_capacity), int(expert_num), drop_pad_mode == 1)
    return prim(x, expert_idx, params)


# ------------------------------------------------------------------------------------------------ finalize
@functools.lru_cache(None)
def _finalize(has_x1, has_x2, has_bias):
    grad = _custom("MoeFinalizeRoutingGrad", lambda e, s, r, b, i, p, d: (e, s, b),
                   lambda e, s, r, b, i, p, d: (ms.float32, ms.float32, ms.float32))

    def bprop(ex, sc, row, x1, x2, bias, eidx, params, out, dout):
        dex, dsc, dbias = grad(ex, sc, row, bias, eidx, params, dout)
        dx1 = dout if has_x1 else ops.zeros_like(x1)
        dx2 = dout if has_x2 else ops.zeros_like(x2)
        return dex, dsc, ops.zeros_like(row), dx1, dx2, dbias, ops.zeros_like(eidx), ops.zeros_like(params)

    return _custom("MoeFinalizeRouting", lambda e, s, r, a, b, c, i, p: [s[0], e[-1]],
                   lambda e, s, r, a, b, c, i, p: ms.float32, bprop, cfg=(has_x1, has_x2, has_bias))


def moe_finalize_routing(expanded_x, scales, expanded_row_idx, x1=None, x2=None, bias=None, expert_idx=None,
                         drop_pad_mode=-1):
    mode = (2 if len(expanded_x.shape) == 2 else 3) if drop_pad_mode < 0 else drop_pad_mode
    has_x1, has_x2, has_bias = x1 is not None, x2 is not None, bias is not None
    params = ms.Tensor([mode, int(has_x1), int(has_x2), int(has_bias)], ms.int32)
    return _finalize(has_x1, has_x2, has_bias)(
        _f32(expanded_x), _f32(scales), ops.cast(expanded_row_idx.reshape(-1), ms.int32),
        _f32(x1) if has_x1 else _dummy_f(), _f32(x2) if has_x2 else _dummy_f(),
        _f32(bias) if has_bias else _dummy_f(),
        ops.cast(expert_idx, ms.int32) if has_bias else _dummy_i(), params)


# ------------------------------------------------------------------------------------------------ grouped matmul
@functools.lru_cache(None)
def _gmm(transpose_weight):
    grad = _custom("GroupedMatmulGrad", lambda x, w, g, p, dy: (x, w), lambda x, w, g, p, dy: (ms.float32, ms.float32))

    def bprop(x, w, gl, params, out, dout):
        dx, dw = grad(x, w, gl, params, dout)
        return dx, dw, ops.zeros_like(gl), ops.zeros_like(params)

    def shape(xs, ws, gs, ps):
        return [xs[0], ws[1] if transpose_weight else ws[2]]

    return _custom("GroupedMatmul", shape, lambda x, w, g, p: ms.float32, bprop, cfg=(transpose_weight,))


def grouped_matmul(x, weight, group_list, group_list_type=0, transpose_weight=False):
    params = ms.Tensor([int(group_list_type), int(bool(transpose_weight))], ms.int32)
    return _gmm(bool(transpose_weight))(_f32(x), _f32(weight), group_list, params)


# ------------------------------------------------------------------------------------------------ expert FFN
@functools.lru_cache(None)
def _grouped_ffn():
    grad = _custom("GroupedFfnGrad", lambda x, a, b, c, g, p, dy: (x, a, b, c),
                   lambda x, a, b, c, g, p, dy: (ms.float32,) * 4)

    def bprop(x, w1, w2, w3, gl, params, out, dout):
        dx, dw1, dw2, dw3 = grad(x, w1, w2, w3, gl, params, dout)
        return dx, dw1, dw2, dw3, ops.zeros_like(gl), ops.zeros_like(params)

    return _custom("GroupedFfn", lambda x, a, b, c, g, p: x, lambda x, a, b, c, g, p: ms.float32, bprop)


def grouped_expert_ffn(x, w1, w2, w3, group_list, swiglu_limit, group_list_type=0):
    params = ms.Tensor([float(swiglu_limit), float(group_list_type)], ms.float32)
    return _grouped_ffn()(_f32(x), _f32(w1), _f32(w2), _f32(w3), group_list, params)


@functools.lru_cache(None)
def _padded_ffn():
    grad = _custom("PaddedFfnGrad", lambda x, a, b, c, p, dy: (x, a, b, c),
                   lambda x, a, b, c, p, dy: (ms.float32,) * 4)

    def bprop(x, w1, w2, w3, params, out, dout):
        dx, dw1, dw2, dw3 = grad(x, w1, w2, w3, params, dout)
        return dx, dw1, dw2, dw3, ops.zeros_like(params)

    return _custom("PaddedFfn", lambda x, a, b, c, p: x, lambda x, a, b, c, p: ms.float32, bprop)


# ------------------------------------------------------------------------------------------------ model-facing
def moe_dispatch(x, ids, num_experts, capacity):
    """Drop/pad dispatch = MoeInitRouting(drop_pad_mode=1): (expanded [E, C, D], slot [T, k])."""
    T, K = ids.shape
    expanded, row, _, _ = moe_init_routing(x, ids, expert_capacity=capacity, expert_num=num_experts, drop_pad_mode=1)
    return expanded, row.reshape(T, K)


def expert_ffn(expanded, w1, w2, w3, swiglu_limit):
    """[E, C, D] expert FFN; the kernel skips each expert's all-zero padding rows (exact: they map to 0)."""
    params = ms.Tensor([float(swiglu_limit)], ms.float32)
    return _padded_ffn()(_f32(expanded), _f32(w1), _f32(w2), _f32(w3), params)


def moe_combine(expert_out, weights, slot):
    """= MoeFinalizeRouting(drop_pad_mode=3) without shared/bias terms."""
    return moe_finalize_routing(expert_out, weights, slot.reshape(-1), drop_pad_mode=3)
