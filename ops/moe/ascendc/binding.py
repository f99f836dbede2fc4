"""MoE backend "ascendc": the AscendC kernels of this folder on 910B / 910C (CANN custom-op package "ascend_v4_moe").

    MoeGatingTopKAv4, MoeInitRoutingAv4, MoeFinalizeRoutingAv4 (AI Vector cores), GroupedMatmulAv4 (AI Cube cores)

Bound through ops/ascend_call.py like every family: one `Contract` per OpDef (op_host/moe_av4_def.cpp, checked
against the source by tests/ops/test_bindings.py), ops.Custom(aot) with reg_info from the contract, one primitive
per static configuration (attributes), every input in its OpDef position with None for an absent optional one,
contract stand-ins when the Ascend resolution is emulated on CPU. Backward: hand-written MindSpore-op VJPs (the
same math as the C++ CPU gradient kernels) attached as bprop. The grouped expert FFN is GroupedMatmulAv4(w1),
GroupedMatmulAv4(w3), clamped SwiGLU (MindSpore ops), GroupedMatmulAv4(w2); where CANN's vendor operators have the
same semantics the registry prefers them (ops/moe/aclnn.py).

NOT RUN on an NPU (docs/ascend.md): verified on CPU are the host tiling over many shapes, the kernels' UB
allocations, the routing algorithm and top-k tie rule (tiling/*.cc), the op_host code against the stand-in CANN host
API, kernel sources type-checking against the AscendC declarations, and this binding's calls against the OpDef
contracts with the model run through the stand-ins.
"""
from __future__ import annotations

import functools

import mindspore as ms
from mindspore import ops

from ... import ascendc_package as _pkg
from ...ascend_call import Attr, Contract, In, primitive
from ...common import linear
from .. import composite as C
from .. import reference as R

FAMILY = "moe"
VENDOR = _pkg.vendor_name(FAMILY)          # "ascend_v4_moe"
OP_TYPES = ("MoeGatingTopKAv4", "MoeInitRoutingAv4", "MoeFinalizeRoutingAv4", "GroupedMatmulAv4")
NOTE = _pkg.install_note(FAMILY, OP_TYPES)
TOLERANCE = (1e-4, 1e-3)

_FLOATS = ("float32", "float16", "bfloat16")       # AV4_FLOAT_TYPES
_I32 = ("int32",) * 3
_F32 = ("float32",) * 3
_I64 = ("int64",) * 3


def _gating_limits(s, a):
    x = s["x"]
    if len(x) != 2:
        return f"x must be [T, E], got {list(x)}"
    if not 1 <= a["k"] <= x[1]:
        return f"k={a['k']} must be in [1, E={x[1]}]"
    if a.get("renorm", 0) != 0 or a.get("norm_type", 2) not in (0, 1, 2):
        return "renorm must be 0 and norm_type 0 (softmax), 1 (sigmoid) or 2 (sqrt-softplus)"
    if (s["input_ids"] is None) != (s["tid2eid"] is None):
        return "hash routing needs both input_ids and tid2eid"
    if s["tid2eid"] is not None and (len(s["tid2eid"]) != 2 or s["tid2eid"][1] != a["k"]):
        return f"tid2eid must be [vocab, k={a['k']}], got {list(s['tid2eid'])}"
    if s["bias"] is not None and tuple(s["bias"]) != (x[1],):
        return f"bias must be [E={x[1]}], got {list(s['bias'])}"
    return None


def _init_limits(s, a):
    if len(s["x"]) != 2 or len(s["expert_idx"]) != 2 or s["x"][0] != s["expert_idx"][0]:
        return f"x [T, H] and expert_idx [T, k] must agree, got {list(s['x'])}, {list(s['expert_idx'])}"
    if a["drop_pad_mode"] == 1 and a.get("expert_capacity", 0) <= 0:
        return "drop/pad mode needs expert_capacity > 0"
    return None


def _finalize_limits(s, a):
    ex, sc = s["expanded_x"], s["scales"]
    if a["drop_pad_mode"] in (1, 3) and len(ex) != 3 or a["drop_pad_mode"] in (0, 2) and len(ex) != 2:
        return f"expanded_x {list(ex)} does not fit drop_pad_mode {a['drop_pad_mode']}"
    if len(sc) != 2 or s["expanded_row_idx"] != (sc[0] * sc[1],):
        return f"expanded_row_idx must be [T*k] for scales [T, k], got {s['expanded_row_idx']} and {list(sc)}"
    if (s["bias"] is None) != (s["expert_idx"] is None):
        return "bias needs expert_idx (and expert_idx is only read with bias)"
    for name in ("x1", "x2"):
        if s[name] is not None and tuple(s[name]) != (sc[0], ex[-1]):
            return f"{name} must be [T, H] = [{sc[0]}, {ex[-1]}], got {list(s[name])}"
    return None


def _gmm_limits(s, a):
    x, w = s["x"], s["weight"]
    if len(x) != 2 or len(w) != 3 or s["group_list"] != (w[0],):
        return f"x [M, K], weight [E, K, N] (or [E, N, K]) and group_list [E] expected, got {x}, {w}, {s['group_list']}"
    k = w[2] if a.get("transpose_weight") else w[1]
    if x[1] != k:
        return f"x has K={x[1]} but weight has K={k} (transpose_weight={a.get('transpose_weight')})"
    return None


CONTRACTS = {
    "MoeGatingTopKAv4": Contract(
        "MoeGatingTopKAv4", "ascendc",
        (In("x", False, ("float32",)), In("bias", True, ("float32",)), In("input_ids", True, ("int32",)),
         In("tid2eid", True, ("int32",))),
        ("y", "expert_idx", "out"),
        (Attr("k", "int", True), Attr("k_group", "int"), Attr("group_count", "int"), Attr("group_select_mode", "int"),
         Attr("renorm", "int"), Attr("norm_type", "int"), Attr("out_flag", "bool"),
         Attr("routed_scaling_factor", "float"), Attr("eps", "float")), _gating_limits),
    "MoeInitRoutingAv4": Contract(
        "MoeInitRoutingAv4", "ascendc", (In("x", False, _FLOATS), In("expert_idx", False, _I32)),
        ("expanded_x", "expanded_row_idx", "expert_tokens_count_or_cumsum", "expert_tokens_before_capacity"),
        (Attr("active_num", "int"), Attr("expert_capacity", "int"), Attr("expert_num", "int", True),
         Attr("drop_pad_mode", "int"), Attr("expert_tokens_count_or_cumsum_flag", "int"),
         Attr("expert_tokens_before_capacity_flag", "bool")), _init_limits),
    "MoeFinalizeRoutingAv4": Contract(
        "MoeFinalizeRoutingAv4", "ascendc",
        (In("expanded_x", False, _FLOATS), In("expanded_row_idx", False, _I32), In("x1", True, _FLOATS),
         In("x2", True, _FLOATS), In("bias", True, _FLOATS), In("scales", False, _F32), In("expert_idx", True, _I32)),
        ("out",), (Attr("drop_pad_mode", "int"),), _finalize_limits),
    "GroupedMatmulAv4": Contract(
        "GroupedMatmulAv4", "ascendc", (In("x", False, _FLOATS), In("weight", False, _FLOATS),
                                        In("group_list", False, _I64)),
        ("y",), (Attr("group_list_type", "int"), Attr("transpose_weight", "bool")), _gmm_limits),
}


def package_installed() -> bool:
    """True when a package CANN would find declares all four op types (any SoC's ops-info json)."""
    return _pkg.package_installed(VENDOR, OP_TYPES)


def available() -> bool:
    """Ascend device AND the package with every op type (ops/ascendc_package.py: one rule for all families)."""
    return _pkg.available(VENDOR, OP_TYPES)


def _none_or_zeros(a):
    return None if a is None else ops.zeros_like(a)


# ------------------------------------------------------------------------------------------------ gating
def _emulate_gating(x, bias, input_ids, tid2eid, **a):
    return R.moe_gating_topk(x, bias, input_ids=input_ids, tid2eid=tid2eid, **a)


@functools.lru_cache(None)
def _gating(k, k_group, group_count, group_select_mode, norm_type, scale, eps, renorm=0):
    def bprop(x, bias, input_ids, tid2eid, out, dout):
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
        return dl, _none_or_zeros(bias), _none_or_zeros(input_ids), _none_or_zeros(tid2eid)

    def shape(x, bias, input_ids, tid2eid):
        return [x[0], k], [x[0], k], x

    def dtype(x, bias, input_ids, tid2eid):
        return ms.float32, ms.int32, ms.float32

    attrs = {"k": k, "k_group": k_group, "group_count": group_count, "group_select_mode": group_select_mode,
             "renorm": renorm, "norm_type": norm_type, "out_flag": True, "routed_scaling_factor": scale, "eps": eps}
    return primitive(CONTRACTS["MoeGatingTopKAv4"], attrs, shape, dtype, bprop, _emulate_gating)


def moe_gating_topk(x, bias=None, k=6, k_group=1, group_count=1, group_select_mode=0, renorm=0, norm_type=2,
                    out_flag=True, routed_scaling_factor=1.0, eps=1e-20, input_ids=None, tid2eid=None):
    hashed = tid2eid is not None
    prim = _gating(int(k), int(k_group), int(group_count), int(group_select_mode), R.norm_type_id(norm_type),
                   float(routed_scaling_factor), float(eps), int(renorm))   # renorm != 0: a contract error
    b = None if bias is None or hashed else ops.cast(bias, ms.float32)
    ids = ops.cast(input_ids.reshape(-1), ms.int32) if hashed else None
    table = ops.cast(tid2eid, ms.int32) if hashed else None
    return prim(ops.cast(x, ms.float32), b, ids, table)


# ------------------------------------------------------------------------------------------------ init routing
def _emulate_init(x, expert_idx, **a):
    return R.moe_init_routing(x, expert_idx, **a)


def init_routing_primitive(contract, active_num, capacity, num_experts, drop_pad_mode, flag):
    """The MoeInitRouting (V2 semantics) primitive of one static configuration on `contract`: ours
    (MoeInitRoutingAv4) or the vendor's aclnnMoeInitRoutingV2 (ops/moe/aclnn.py), the same outputs and backward
    (the finalize of the gradient rows)."""
    drop_pad = drop_pad_mode == 1

    def bprop(x, ids, out, dout):
        T, K = ids.shape
        dx = C.moe_finalize_routing(ops.cast(dout[0], ms.float32), ops.ones((T, K), ms.float32), out[1],
                                    drop_pad_mode=3 if drop_pad else 2)
        return ops.cast(dx, x.dtype), ops.zeros_like(ids)

    def shape(xs, ids):
        n = ids[0] * ids[1]
        ex = [num_experts, capacity, xs[1]] if drop_pad else [min(active_num, n) if active_num > 0 else n, xs[1]]
        return ex, [n], [num_experts], [num_experts]

    def dtype(xd, idd):
        return xd, ms.int32, ms.int32, ms.int32

    attrs = {"active_num": active_num, "expert_capacity": capacity, "expert_num": num_experts,
             "drop_pad_mode": drop_pad_mode, "expert_tokens_count_or_cumsum_flag": flag,
             "expert_tokens_before_capacity_flag": True}
    return primitive(contract, attrs, shape, dtype, bprop, _emulate_init)


_init_routing = functools.lru_cache(None)(functools.partial(init_routing_primitive, CONTRACTS["MoeInitRoutingAv4"]))


def moe_init_routing(x, expert_idx, active_num=0, expert_capacity=0, expert_num=0, drop_pad_mode=0,
                     expert_tokens_count_or_cumsum_flag=1, expert_tokens_before_capacity_flag=True):
    prim = _init_routing(int(active_num), int(expert_capacity), int(expert_num), int(drop_pad_mode == 1),
                         int(expert_tokens_count_or_cumsum_flag))
    return prim(x, ops.cast(expert_idx, ms.int32))


# ------------------------------------------------------------------------------------------------ finalize
def _emulate_finalize(expanded_x, expanded_row_idx, x1, x2, bias, scales, expert_idx, drop_pad_mode):
    return R.moe_finalize_routing(expanded_x, scales, expanded_row_idx, x1, x2, bias, expert_idx, drop_pad_mode)


def finalize_backward(mode, ex, row, x1, x2, bias, scales, eidx, dout):
    """VJP of out[t] = x1 + x2 + Σ_k scales[t,k]·(expanded_x[row(t,k)] + bias[expert(t,k)]) for every input
    (None for absent ones); also the backward of the vendor MoeFinalizeRouting (ops/moe/aclnn.py)."""
    H = ex.shape[-1]
    flat = ex.reshape(-1, H)
    Rn = flat.shape[0]
    T, K = scales.shape
    idx = row.reshape(K, T).swapaxes(0, 1) if mode in (0, 1) else row.reshape(T, K)
    valid = (idx >= 0) & (idx < Rn)
    safe = ops.where(valid, idx, ops.zeros_like(idx))
    w = ops.where(valid, scales, ops.zeros_like(scales))
    contrib = (ops.expand_dims(w, -1) * ops.expand_dims(dout, 1)).reshape(T * K, H)
    dex = ops.unsorted_segment_sum(contrib, ops.where(valid, idx, ops.full_like(idx, Rn)).reshape(-1), Rn + 1)[:Rn]
    rows = ops.gather(flat, safe.reshape(-1), 0).reshape(T, K, H)
    dsc = ops.sum(rows * ops.expand_dims(dout, 1), -1) * ops.cast(valid, ms.float32)
    dbias = None
    if bias is not None:
        dsc = dsc + ops.sum(ops.gather(bias, eidx.reshape(-1), 0).reshape(T, K, H) * ops.expand_dims(dout, 1), -1) \
            * ops.cast(valid, ms.float32)
        dbias = ops.unsorted_segment_sum(contrib, eidx.reshape(-1), bias.shape[0])
    return (dex.reshape(ex.shape), ops.zeros_like(row), None if x1 is None else dout, None if x2 is None else dout,
            dbias, dsc, _none_or_zeros(eidx))


@functools.lru_cache(None)
def _finalize(mode):
    def bprop(ex, row, x1, x2, bias, scales, eidx, out, dout):
        return finalize_backward(mode, ex, row, x1, x2, bias, scales, eidx, dout)

    def shape(ex, row, x1, x2, bias, scales, eidx):
        return [scales[0], ex[-1]]

    def dtype(ex, row, x1, x2, bias, scales, eidx):
        return ex

    return primitive(CONTRACTS["MoeFinalizeRoutingAv4"], {"drop_pad_mode": mode}, shape, dtype, bprop,
                     _emulate_finalize)


def moe_finalize_routing(expanded_x, scales, expanded_row_idx, x1=None, x2=None, bias=None, expert_idx=None,
                         drop_pad_mode=-1):
    mode = (2 if len(expanded_x.shape) == 2 else 3) if drop_pad_mode < 0 else drop_pad_mode
    eidx = ops.cast(expert_idx, ms.int32) if bias is not None else None
    return _finalize(mode)(expanded_x, ops.cast(expanded_row_idx.reshape(-1), ms.int32), x1, x2, bias,
                                   ops.cast(scales, ms.float32), eidx)


# ------------------------------------------------------------------------------------------------ grouped matmul
def _emulate_gmm(x, weight, group_list, **a):
    return R.grouped_matmul(x, weight, group_list, **a)


def gmm_primitive(contract, attrs, group_list_type, transpose_weight, dx_matmul, emulate):
    """The grouped-matmul (split_item 3, group_type 0) primitive of one configuration on `contract`: ours
    (GroupedMatmulAv4) or the vendor's aclnnGroupedMatmulV4 (ops/moe/aclnn.py). Backward: dx through `dx_matmul`
    (a grouped matmul with the weight's other orientation), dw by a batched matmul of the zero-padded groups."""
    def bprop(x, w, gl, out, dout):
        dx = dx_matmul(dout, w, gl, group_list_type, not transpose_weight)
        E = w.shape[0]
        xp, _, _ = C._pad_groups(x, gl, group_list_type, E)
        dyp, _, _ = C._pad_groups(dout, gl, group_list_type, E)
        dw = ops.bmm(dyp.swapaxes(1, 2), xp) if transpose_weight else ops.bmm(xp.swapaxes(1, 2), dyp)
        return dx, ops.cast(dw, w.dtype), ops.zeros_like(gl)

    def shape(xs, ws, gs):
        return [xs[0], ws[1] if transpose_weight else ws[2]]

    def dtype(xd, wd, gd):
        return xd

    return primitive(contract, attrs, shape, dtype, bprop, emulate)


@functools.lru_cache(None)
def _gmm(group_list_type, transpose_weight):
    attrs = {"group_list_type": group_list_type, "transpose_weight": transpose_weight}
    return gmm_primitive(CONTRACTS["GroupedMatmulAv4"], attrs, group_list_type, transpose_weight, grouped_matmul,
                         _emulate_gmm)


def grouped_matmul(x, weight, group_list, group_list_type=0, transpose_weight=False):
    if weight.dtype == ms.float32 and not transpose_weight:
        # the Cube's 2D load transposes 16-bit fractals only: a float32 weight goes as [E, N, K] (the tiling refuses
        # [E, K, N], see grouped_matmul_av4.cpp)
        weight, transpose_weight = weight.swapaxes(1, 2), True
    y = _gmm(int(group_list_type), bool(transpose_weight))(x, weight, ops.cast(group_list, ms.int64))
    _, _, inside = C._group_rows(group_list, group_list_type, x.shape[0], weight.shape[0])
    return y * ops.expand_dims(ops.cast(inside, y.dtype), -1)      # rows past the last group: 0 (reference)


# ------------------------------------------------------------------------------------------------ compositions
def swiglu(g, u, limit):
    """V4's clamped SwiGLU on expert activations (gate clamped above, up clamped both ways)."""
    if limit > 0:
        u = ops.clamp(u, -limit, limit)
        g = ops.minimum(g, limit)
    return g * ops.sigmoid(g) * u


def expert_ffn_through(gmm, x, w1, w2, w3, group_list, swiglu_limit, group_list_type=0):
    """GMM(w1), GMM(w3), clamped SwiGLU, GMM(w2) with the grouped matmul `gmm` (ours, or the vendor's in aclnn.py)."""
    g = gmm(x, w1, group_list, group_list_type, True)
    u = gmm(x, w3, group_list, group_list_type, True)
    return gmm(swiglu(g, u, swiglu_limit), w2, group_list, group_list_type, True)


def grouped_expert_ffn(x, w1, w2, w3, group_list, swiglu_limit, group_list_type=0):
    return expert_ffn_through(grouped_matmul, x, w1, w2, w3, group_list, swiglu_limit, group_list_type)


def expert_ffn(expanded, w1, w2, w3, swiglu_limit):
    E, Cap, D = expanded.shape
    gl = ops.fill(ms.int64, (E,), Cap)
    return grouped_expert_ffn(expanded.reshape(E * Cap, D), w1, w2, w3, gl, swiglu_limit, 1).reshape(E, Cap, D)


def moe_route(x, gate_w, bias, topk, route_scale, score_func="sqrtsoftplus", input_ids=None, tid2eid=None,
              gate_temp=1.0, eps=0.0):
    logits = linear(ops.cast(x, ms.float32), ops.cast(gate_w, ms.float32))
    if gate_temp != 1.0:                                 # DeepSeek-V4.1's router temperature
        logits = logits / gate_temp
    y, ids, _ = moe_gating_topk(logits, bias, topk, norm_type=score_func, routed_scaling_factor=route_scale,
                                eps=eps, input_ids=input_ids, tid2eid=tid2eid)
    return y, ids


def moe_dispatch(x, ids, num_experts, capacity):
    T, K = ids.shape
    expanded, row, _, _ = moe_init_routing(x, ids, 0, capacity, num_experts, 1, 1)
    return expanded, row.reshape(T, K)


def moe_combine(expert_out, weights, slot):
    return moe_finalize_routing(expert_out, weights, slot.reshape(-1), drop_pad_mode=3)


def register_backends():
    from ...registry import on_target_change, register
    for cache in (_gating, _init_routing, _finalize, _gmm):   # device primitives and CPU stand-ins differ
        on_target_change(cache.cache_clear)
    kernels = {"moe_gating_topk": "MoeGatingTopKAv4", "moe_route": "MoeGatingTopKAv4",
               "moe_init_routing": "MoeInitRoutingAv4", "moe_dispatch": "MoeInitRoutingAv4",
               "moe_finalize_routing": "MoeFinalizeRoutingAv4", "moe_combine": "MoeFinalizeRoutingAv4",
               "grouped_matmul": "GroupedMatmulAv4", "grouped_expert_ffn": "GroupedMatmulAv4 x3 + SwiGLU",
               "expert_ffn": "GroupedMatmulAv4 x3 + SwiGLU"}
    for name, k in kernels.items():
        register(name, "ascendc", ("Ascend",), priority=20, available=available, tolerance=TOLERANCE,
                 note=NOTE, what=f"AscendC {k} (package {VENDOR})")(globals()[name])
