"""MoE backend "aclnn": CANN's vendor operators where they have V4's semantics, called through the functions
MindSpore 2.10 ships (``mindspore.ops``, pyboost / graph kernels of the aclnn operators), behind the same registry
functions as every backend, bound through ops/ascend_call.py (contract checked; CPU stand-ins when emulated).

    op (ours)             vendor operator (CANN)             argument layout / semantic difference
    moe_init_routing   -> aclnnMoeInitRoutingV2 (>= 8.0)      same arguments and outputs (our op is V2's semantics);
                          ops.moe_init_routing_v2              not covered: our "inactive id" extension (EP-local
                                                               selection; on Ascend EP uses AlltoAll / MC2 dispatch)
    moe_finalize_routing -> aclnnMoeFinalizeRouting (>= 8.0)  MindSpore 2.10 exposes V1 only: x1 required (zeros when
                          ops.moe_finalize_routing             absent), scales in expanded_x's dtype, row index in V1's
                                                               column layout (k*T + t): our V2 row layout is transposed;
                                                               drop/pad modes 1/3 (V2-only) go to our AscendC kernel
    grouped_matmul     -> aclnnGroupedMatmulV4 (>= 8.0)       ops.grouped_matmul(split_item=3, group_type=0), int64
                          ops.grouped_matmul                   cumsum group list (counts are cumsummed first); rows past
                                                               the last group are zeroed after the call (reference)
    grouped_expert_ffn -> GroupedMatmul(w1), GroupedMatmul(w3), V4's clamped SwiGLU (not the vendor Swiglu: no
                          clamp), GroupedMatmul(w2)

Not mapped (the registry resolves our AscendC kernels, ops/moe/ascendc/): V4's gating (CANN's MoeGatingTopK has
softmax/sigmoid only; the sqrt-softplus + hash variant is a cann-recipes custom op, documented for A3 only) and the
drop/pad dispatch of moe_dispatch/moe_combine. Limits: docs/ascend.md. Backward on the device: MindSpore's
registered bprops of these primitives; the CPU stand-ins carry the equivalent VJPs below so a train step runs
through them. NOT RUN on an NPU.
"""
from __future__ import annotations

import functools

import mindspore as ms
from mindspore import ops

from ..ascend_call import Attr, Contract, In, primitive
from ..registry import on_target_change, target
from . import composite as C
from . import reference as R
from .ascendc.binding import expert_ffn_through, finalize_backward, gmm_primitive, init_routing_primitive
from .ascendc.binding import moe_finalize_routing as ascendc_finalize

CANN = "8.0"                                   # first CANN release with all four operators on 910B (A2) and 910C
_FLOATS = ("float16", "bfloat16", "float32")
_I32 = ("int32",) * 3
_I64 = ("int64",) * 3


def available() -> bool:
    """On an Ascend device with MindSpore's vendor MoE functions; always for the emulated / planned Ascend."""
    t = target()
    if t.device == "Ascend" and (t.emulated or t.planning):
        return True
    return t.device == "Ascend" and hasattr(ops, "moe_init_routing_v2") and hasattr(ops, "grouped_matmul")


def _init_limits(s, a):
    if len(s["x"]) != 2 or len(s["expert_idx"]) != 2:
        return "x [T, H] and expert_idx [T, k] (int32, 2-D on A2/A3)"
    if a["drop_pad_mode"] not in (0, 1) or a["expert_tokens_count_or_cumsum_flag"] not in (0, 1, 2):
        return "drop_pad_mode 0/1, expert_tokens_count_or_cumsum_flag 0/1/2"
    if a["drop_pad_mode"] == 1 and a["expert_capacity"] <= 0:
        return "drop/pad needs expert_capacity > 0"
    return None


def _finalize_limits(s, a):
    if len(s["expanded_x"]) != 2:
        return "V1 finalize takes expanded_x [T*k, H] (no drop/pad layout)"
    return None


def _gmm_limits(s, a):
    x, w = s["x"], s["weight"]
    if len(x) != 2 or len(w) != 3 or s["group_list"] != (w[0],):
        return f"split_item 3 wants x [M, K], weight [E, K, N], group_list [E]; got {x}, {w}, {s['group_list']}"
    return None


def _device_init(a):
    def call(x, expert_idx):
        return ops.moe_init_routing_v2(x, expert_idx, a["active_num"], a["expert_capacity"], a["expert_num"],
                                       a["drop_pad_mode"], a["expert_tokens_count_or_cumsum_flag"],
                                       a["expert_tokens_before_capacity_flag"])
    return call


def _device_finalize(a):
    def call(expanded_x, x1, x2, bias, scales, expanded_row_idx, expanded_expert_idx):
        return ops.moe_finalize_routing(expanded_x, x1, x2, bias, scales, expanded_row_idx, expanded_expert_idx)
    return call


def _device_gmm(a):
    def call(x, weight, group_list):
        return ops.grouped_matmul([x], [weight], group_list=group_list, split_item=3, group_type=0,
                                  transpose_b=a["transpose_b"])[0]
    return call


CONTRACTS = {
    "MoeInitRoutingV2": Contract(
        "aclnnMoeInitRoutingV2", "aclnn", (In("x", False, _FLOATS), In("expert_idx", False, _I32)),
        ("expanded_x", "expanded_row_idx", "expert_tokens_count_or_cumsum", "expert_tokens_before_capacity"),
        (Attr("active_num", "int"), Attr("expert_capacity", "int"), Attr("expert_num", "int", True),
         Attr("drop_pad_mode", "int"), Attr("expert_tokens_count_or_cumsum_flag", "int"),
         Attr("expert_tokens_before_capacity_flag", "bool")), _init_limits, device=_device_init),
    "MoeFinalizeRouting": Contract(
        "aclnnMoeFinalizeRouting", "aclnn",
        (In("expanded_x", False, _FLOATS), In("x1", False, _FLOATS), In("x2", True, _FLOATS),
         In("bias", True, _FLOATS), In("scales", False, _FLOATS), In("expanded_row_idx", False, _I32),
         In("expanded_expert_idx", True, _I32)),
        ("y",), (), _finalize_limits, device=_device_finalize),
    "GroupedMatmul": Contract(
        "aclnnGroupedMatmulV4", "aclnn", (In("x", False, _FLOATS), In("weight", False, _FLOATS),
                                          In("group_list", False, _I64)),
        ("y",), (Attr("transpose_b", "bool"),), _gmm_limits, device=_device_gmm),
}


# ------------------------------------------------------------------------------------------------ init routing
_init = functools.lru_cache(None)(functools.partial(init_routing_primitive, CONTRACTS["MoeInitRoutingV2"]))


def moe_init_routing(x, expert_idx, active_num=0, expert_capacity=0, expert_num=0, drop_pad_mode=0,
                     expert_tokens_count_or_cumsum_flag=1, expert_tokens_before_capacity_flag=True):
    prim = _init(int(active_num), int(expert_capacity), int(expert_num), int(drop_pad_mode),
                 int(expert_tokens_count_or_cumsum_flag))
    return prim(x, ops.cast(expert_idx, ms.int32))


# ------------------------------------------------------------------------------------------------ finalize (V1)
def _emulate_finalize(expanded_x, x1, x2, bias, scales, expanded_row_idx, expanded_expert_idx):
    return R.moe_finalize_routing(expanded_x, scales, expanded_row_idx, x1, x2, bias, expanded_expert_idx, 0)


@functools.lru_cache(None)
def _finalize():
    def bprop(ex, x1, x2, bias, scales, row, eidx, out, dout):
        g = finalize_backward(0, ex, row, x1, x2, bias, scales, eidx, dout)
        return g[0], g[2], g[3], g[4], ops.cast(g[5], scales.dtype), g[1], g[6]

    def shape(ex, x1, x2, bias, scales, row, eidx):
        return x1

    def dtype(ex, x1, x2, bias, scales, row, eidx):
        return ex

    return primitive(CONTRACTS["MoeFinalizeRouting"], {}, shape, dtype, bprop, _emulate_finalize)


def moe_finalize_routing(expanded_x, scales, expanded_row_idx, x1=None, x2=None, bias=None, expert_idx=None,
                         drop_pad_mode=-1):
    mode = (2 if len(expanded_x.shape) == 2 else 3) if drop_pad_mode < 0 else drop_pad_mode
    if mode in (1, 3):        # drop/pad layouts: V1 has none -> our AscendC MoeFinalizeRoutingAv4 (modes 0-3)
        return ascendc_finalize(expanded_x, scales, expanded_row_idx, x1, x2, bias, expert_idx, mode)
    T, K = scales.shape
    idx = ops.cast(expanded_row_idx.reshape(-1), ms.int32)
    if mode == 2:
        idx = idx.reshape(T, K).swapaxes(0, 1).reshape(-1)          # V2 row-arranged -> V1 column-arranged
    if x1 is None:
        x1 = ops.zeros((T, expanded_x.shape[-1]), expanded_x.dtype)
    eidx = ops.cast(expert_idx, ms.int32) if bias is not None else None
    return _finalize()(expanded_x, x1, x2, bias, ops.cast(scales, expanded_x.dtype), idx, eidx)


# ------------------------------------------------------------------------------------------------ grouped matmul
def _emulate_gmm(x, weight, group_list, transpose_b):
    return R.grouped_matmul(x, weight, group_list, 0, transpose_b)


@functools.lru_cache(None)
def _gmm(transpose_b):
    return gmm_primitive(CONTRACTS["GroupedMatmul"], {"transpose_b": transpose_b}, 0, transpose_b, C.grouped_matmul,
                         _emulate_gmm)


def grouped_matmul(x, weight, group_list, group_list_type=0, transpose_weight=False):
    gl = ops.cast(group_list, ms.int64)
    if group_list_type == 1:
        gl = ops.cumsum(gl, 0)
    y = _gmm(bool(transpose_weight))(x, weight, gl)
    _, _, inside = C._group_rows(group_list, group_list_type, x.shape[0], weight.shape[0])
    return y * ops.expand_dims(ops.cast(inside, y.dtype), -1)


def grouped_expert_ffn(x, w1, w2, w3, group_list, swiglu_limit, group_list_type=0):
    return expert_ffn_through(grouped_matmul, x, w1, w2, w3, group_list, swiglu_limit, group_list_type)


def _cann_limit(t):
    from ..vendor import cann_at_least
    return None if cann_at_least(t.cann, CANN) else f"needs CANN >= {CANN}, the target has {t.cann}"


def register_backends():
    from ..registry import register
    what = {"moe_init_routing": f"aclnnMoeInitRoutingV2 via ops.moe_init_routing_v2 (CANN >= {CANN})",
            "moe_finalize_routing": f"aclnnMoeFinalizeRouting via ops.moe_finalize_routing (CANN >= {CANN})",
            "grouped_matmul": f"aclnnGroupedMatmulV4 via ops.grouped_matmul (CANN >= {CANN})",
            "grouped_expert_ffn": f"aclnnGroupedMatmulV4 x3 + clamped SwiGLU (CANN >= {CANN})"}
    for name, w in what.items():
        register(name, "aclnn", ("Ascend",), priority=30, available=available, tolerance=(1e-4, 1e-3),
                 note="MindSpore's vendor MoE functions on an Ascend device", what=w, limits=_cann_limit)(globals()[name])
    for cache in (_init, _finalize, _gmm):
        on_target_change(cache.cache_clear)
