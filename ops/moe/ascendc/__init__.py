"""MoE backend "ascendc": the AscendC kernels of this folder on 910B / 910C (CANN custom-op package "ascend_v4_moe").

    MoeGatingTopKAv4, MoeInitRoutingAv4, MoeFinalizeRoutingAv4 (AI Vector cores), GroupedMatmulAv4 (AI Cube cores)

Installed as a CANN custom-op package (`bash ops/moe/ascendc/build.sh --install`); MindSpore calls them through
ops.Custom(func="<OpType>", func_type="aot") with CustomRegOp attributes, one primitive per static configuration.
Backward: hand-written MindSpore-op VJPs (the same math as the C++ CPU gradient kernels) attached with bprop.
The grouped expert FFN is GroupedMatmulAv4(w1), GroupedMatmulAv4(w3), clamped SwiGLU (MindSpore ops),
GroupedMatmulAv4(w2); on hardware the vendor's fused GroupedMatmul(+Swiglu) path (backend "aclnn") is preferred.

Registered for platform "Ascend" only; available() (ops/ascendc_package.py, the same rule for every family) needs
an Ascend device and an installed package declaring all four op types, so on CPU the registry never picks it.
NOT RUN: no NPU/CANN was available; what is verified on CPU is the host tiling over many shapes, the kernels' UB
allocations against the tiling, the multi-core routing algorithm and the top-k tie rule
(tiling/tiling_check.cc, tiling/ub_probe.cc), the op_host code against the stand-in CANN host API
(tiling/host_check.cc), and that every kernel source type-checks against the AscendC declarations
(tests/ops/test_moe_ascendc.py).
"""
from __future__ import annotations

import functools

from ... import ascendc_package as _pkg

FAMILY = "moe"
VENDOR = _pkg.vendor_name(FAMILY)          # "ascend_v4_moe"
OP_TYPES = ("MoeGatingTopKAv4", "MoeInitRoutingAv4", "MoeFinalizeRoutingAv4", "GroupedMatmulAv4")
NOTE = _pkg.install_note(FAMILY, OP_TYPES)
TOLERANCE = (1e-4, 1e-3)


def package_installed() -> bool:
    """True when a package CANN would find declares all four op types (any SoC's ops-info json)."""
    return _pkg.package_installed(VENDOR, OP_TYPES)


def available() -> bool:
    """Ascend device AND the package with every op type (ops/ascendc_package.py: one rule for all families)."""
    return _pkg.available(VENDOR, OP_TYPES)


def _reg(op_type, inputs, outputs, attrs):
    from mindspore.ops import CustomRegOp, DataType
    reg = CustomRegOp(op_type)
    for i, (name, kind) in enumerate(inputs):
        reg = reg.input(i, name, kind)
    for i, name in enumerate(outputs):
        reg = reg.output(i, name)
    for name, vtype, value in attrs:
        reg = reg.attr(name, "required", vtype, value=value)
    reg = reg.dtype_format(*([DataType.None_None] * (len(inputs) + len(outputs))))
    return reg.target("Ascend").get_op_info()


def _custom(op_type, inputs, outputs, attrs, out_shape, out_dtype, bprop):
    from mindspore import ops
    return ops.Custom(op_type, out_shape=out_shape, out_dtype=out_dtype, func_type="aot",
                      reg_info=_reg(op_type, inputs, outputs, attrs), bprop=bprop)


# ------------------------------------------------------------------------------------------------ gating
@functools.lru_cache(None)
def _gating(k, k_group, group_count, group_select_mode, norm_type, scale, eps, has_bias, hashed):
    import mindspore as ms
    from mindspore import ops
    from .. import composite as C

    def bprop(x, *rest):
        out, dout = rest[-2], rest[-1]
        ids = out[1]
        s = C._scores(x, norm_type)
        E = x.shape[-1]
        oh = ops.one_hot(ids, E, ops.ones((), ms.float32), ops.zeros((), ms.float32))           # [T, k, E]
        dy = dout[0]
        if norm_type == 0:
            ds = dout[2] + ops.sum(oh * ops.expand_dims(dy * scale, -1), 1)
            dl = s * (ds - ops.sum(ds * s, -1, True))
        else:
            sk = ops.gather_elements(s, 1, ids)
            tot = ops.sum(sk, -1, True) + eps
            dsel = scale * (dy / tot - ops.sum(dy * sk, -1, True) / (tot * tot))
            ds = dout[2] + ops.sum(oh * ops.expand_dims(dsel, -1), 1)
            dl = ds * s * (1 - s) if norm_type == 1 else ds * ops.sigmoid(x) / (2 * ops.maximum(s, 1e-30))
        return (dl,) + tuple(ops.zeros_like(a) for a in rest[:-2])

    inputs = [("x", "required")] + ([("bias", "optional")] if has_bias else []) + \
             ([("input_ids", "optional"), ("tid2eid", "optional")] if hashed else [])
    attrs = [("k", "int", k), ("k_group", "int", k_group), ("group_count", "int", group_count),
             ("group_select_mode", "int", group_select_mode), ("renorm", "int", 0), ("norm_type", "int", norm_type),
             ("out_flag", "bool", True), ("routed_scaling_factor", "float", scale), ("eps", "float", eps)]
    return _custom("MoeGatingTopKAv4", inputs, ["y", "expert_idx", "out"], attrs,
                   lambda x, *a: ([x[0], k], [x[0], k], x), lambda x, *a: (ms.float32, ms.int32, ms.float32), bprop)


def moe_gating_topk(x, bias=None, k=6, k_group=1, group_count=1, group_select_mode=0, renorm=0, norm_type=2,
                    out_flag=True, routed_scaling_factor=1.0, eps=1e-20, input_ids=None, tid2eid=None):
    import mindspore as ms
    from mindspore import ops
    from .. import reference
    if renorm != 0:
        raise ValueError("only renorm=0 is implemented")
    hashed = tid2eid is not None
    has_bias = bias is not None and not hashed
    prim = _gating(int(k), int(k_group), int(group_count), int(group_select_mode), reference.norm_type_id(norm_type),
                   float(routed_scaling_factor), float(eps), has_bias, hashed)
    args = [ops.cast(x, ms.float32)]
    if has_bias:
        args.append(ops.cast(bias, ms.float32))
    if hashed:
        args += [ops.cast(input_ids.reshape(-1), ms.int32), ops.cast(tid2eid, ms.int32)]
    return prim(*args)


# ------------------------------------------------------------------------------------------------ init routing
@functools.lru_cache(None)
def _init_routing(active_num, capacity, num_experts, drop_pad, flag):
    import mindspore as ms
    from mindspore import ops
    from .. import composite as C

    def bprop(x, ids, out, dout):
        T, K = ids.shape
        dx = C.moe_finalize_routing(ops.cast(dout[0], ms.float32), ops.ones((T, K), ms.float32), out[1],
                                    drop_pad_mode=3 if drop_pad else 2)
        return ops.cast(dx, x.dtype), ops.zeros_like(ids)

    def shape(xs, ids):
        n = ids[0] * ids[1]
        ex = [num_experts, capacity, xs[1]] if drop_pad else [min(active_num, n) if active_num > 0 else n, xs[1]]
        return ex, [n], [num_experts], [num_experts]

    attrs = [("active_num", "int", active_num), ("expert_capacity", "int", capacity), ("expert_num", "int", num_experts),
             ("drop_pad_mode", "int", int(drop_pad)), ("expert_tokens_count_or_cumsum_flag", "int", flag),
             ("expert_tokens_before_capacity_flag", "bool", True)]
    return _custom("MoeInitRoutingAv4", [("x", "required"), ("expert_idx", "required")],
                   ["expanded_x", "expanded_row_idx", "expert_tokens_count_or_cumsum", "expert_tokens_before_capacity"],
                   attrs, shape, lambda xd, idd: (xd, ms.int32, ms.int32, ms.int32), bprop)


def moe_init_routing(x, expert_idx, active_num=0, expert_capacity=0, expert_num=0, drop_pad_mode=0,
                     expert_tokens_count_or_cumsum_flag=1, expert_tokens_before_capacity_flag=True):
    import mindspore as ms
    from mindspore import ops
    prim = _init_routing(int(active_num), int(expert_capacity), int(expert_num), drop_pad_mode == 1,
                         int(expert_tokens_count_or_cumsum_flag))
    return prim(x, ops.cast(expert_idx, ms.int32))


# ------------------------------------------------------------------------------------------------ finalize
@functools.lru_cache(None)
def _finalize(mode, has_x1, has_x2, has_bias):
    import mindspore as ms
    from mindspore import ops

    def bprop(*args):
        out, dout = args[-2], args[-1]
        ex, row, scales = args[0], args[1], args[-3 - int(has_bias)]   # inputs, then out, dout
        H = ex.shape[-1]
        flat = ex.reshape(-1, H)
        R = flat.shape[0]
        T, K = scales.shape
        idx = row.reshape(K, T).swapaxes(0, 1) if mode in (0, 1) else row.reshape(T, K)
        valid = (idx >= 0) & (idx < R)
        safe = ops.where(valid, idx, ops.zeros_like(idx))
        w = ops.where(valid, scales, ops.zeros_like(scales))
        contrib = (ops.expand_dims(w, -1) * ops.expand_dims(dout, 1)).reshape(T * K, H)
        dex = ops.unsorted_segment_sum(contrib, ops.where(valid, idx, ops.full_like(idx, R)).reshape(-1), R + 1)[:R]
        rows = ops.gather(flat, safe.reshape(-1), 0).reshape(T, K, H)
        dsc = ops.sum(rows * ops.expand_dims(dout, 1), -1) * ops.cast(valid, ms.float32)
        grads = [dex.reshape(ex.shape), ops.zeros_like(row)]
        if has_x1:
            grads.append(dout)
        if has_x2:
            grads.append(dout)
        if has_bias:
            bias, eidx = args[2 + int(has_x1) + int(has_x2)], args[-3]
            dsc = dsc + ops.sum(ops.gather(bias, eidx.reshape(-1), 0).reshape(T, K, H) * ops.expand_dims(dout, 1), -1) \
                * ops.cast(valid, ms.float32)
            grads.append(ops.unsorted_segment_sum(contrib, eidx.reshape(-1), bias.shape[0]))
        grads.append(dsc)
        if has_bias:
            grads.append(ops.zeros_like(args[-3]))
        return tuple(grads)

    inputs = [("expanded_x", "required"), ("expanded_row_idx", "required")] + \
             ([("x1", "optional")] if has_x1 else []) + ([("x2", "optional")] if has_x2 else []) + \
             ([("bias", "optional")] if has_bias else []) + [("scales", "required")] + \
             ([("expert_idx", "optional")] if has_bias else [])
    return _custom("MoeFinalizeRoutingAv4", inputs, ["out"], [("drop_pad_mode", "int", mode)],
                   lambda e, *a: [a[-2 if has_bias else -1][0], e[-1]], lambda e, *a: e, bprop)


def moe_finalize_routing(expanded_x, scales, expanded_row_idx, x1=None, x2=None, bias=None, expert_idx=None,
                         drop_pad_mode=-1):
    import mindspore as ms
    from mindspore import ops
    mode = (2 if len(expanded_x.shape) == 2 else 3) if drop_pad_mode < 0 else drop_pad_mode
    args = [expanded_x, ops.cast(expanded_row_idx.reshape(-1), ms.int32)]
    args += [a for a in (x1, x2, bias) if a is not None]
    args.append(ops.cast(scales, ms.float32))
    if bias is not None:
        args.append(ops.cast(expert_idx, ms.int32))
    return _finalize(mode, x1 is not None, x2 is not None, bias is not None)(*args)


# ------------------------------------------------------------------------------------------------ grouped matmul
@functools.lru_cache(None)
def _gmm(group_list_type, transpose_weight):
    import mindspore as ms
    from mindspore import ops
    from .. import composite as C

    def bprop(x, w, gl, out, dout):
        dx = grouped_matmul(dout, w, gl, group_list_type, not transpose_weight)
        E = w.shape[0]
        xp, _, _ = C._pad_groups(x, gl, group_list_type, E)
        dyp, _, _ = C._pad_groups(dout, gl, group_list_type, E)
        dw = ops.bmm(dyp.swapaxes(1, 2), xp) if transpose_weight else ops.bmm(xp.swapaxes(1, 2), dyp)
        return dx, ops.cast(dw, w.dtype), ops.zeros_like(gl)

    attrs = [("group_list_type", "int", group_list_type), ("transpose_weight", "bool", transpose_weight)]
    return _custom("GroupedMatmulAv4", [("x", "required"), ("weight", "required"), ("group_list", "required")], ["y"],
                   attrs, lambda xs, ws, gs: [xs[0], ws[1] if transpose_weight else ws[2]], lambda xd, wd, gd: xd,
                   bprop)


def grouped_matmul(x, weight, group_list, group_list_type=0, transpose_weight=False):
    import mindspore as ms
    from mindspore import ops
    from .. import composite as C
    y = _gmm(int(group_list_type), bool(transpose_weight))(x, weight, ops.cast(group_list, ms.int64))
    _, _, inside = C._group_rows(group_list, group_list_type, x.shape[0], weight.shape[0])
    return y * ops.expand_dims(ops.cast(inside, y.dtype), -1)      # rows past the last group: 0 (reference)


# ------------------------------------------------------------------------------------------------ compositions
def _swiglu(g, u, limit):
    from mindspore import ops
    if limit > 0:
        u = ops.clamp(u, -limit, limit)
        g = ops.minimum(g, limit)
    return g * ops.sigmoid(g) * u


def grouped_expert_ffn(x, w1, w2, w3, group_list, swiglu_limit, group_list_type=0):
    g = grouped_matmul(x, w1, group_list, group_list_type, True)
    u = grouped_matmul(x, w3, group_list, group_list_type, True)
    return grouped_matmul(_swiglu(g, u, swiglu_limit), w2, group_list, group_list_type, True)


def expert_ffn(expanded, w1, w2, w3, swiglu_limit):
    import mindspore as ms
    from mindspore import ops
    E, C, D = expanded.shape
    gl = ops.fill(ms.int64, (E,), C)
    return grouped_expert_ffn(expanded.reshape(E * C, D), w1, w2, w3, gl, swiglu_limit, 1).reshape(E, C, D)


def moe_route(x, gate_w, bias, topk, route_scale, score_func="sqrtsoftplus", input_ids=None, tid2eid=None):
    import mindspore as ms
    from mindspore import ops
    from ...common import linear
    logits = linear(ops.cast(x, ms.float32), ops.cast(gate_w, ms.float32))
    y, ids, _ = moe_gating_topk(logits, bias, topk, norm_type=score_func, routed_scaling_factor=route_scale,
                                input_ids=input_ids, tid2eid=tid2eid)
    return y, ids


def moe_dispatch(x, ids, num_experts, capacity):
    T, K = ids.shape
    expanded, row, _, _ = moe_init_routing(x, ids, 0, capacity, num_experts, 1, 1)
    return expanded, row.reshape(T, K)


def moe_combine(expert_out, weights, slot):
    return moe_finalize_routing(expert_out, weights, slot.reshape(-1), drop_pad_mode=3)
