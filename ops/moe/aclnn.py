"""MoE backend "aclnn": our vendor-named ops mapped onto the vendor operators MindSpore 2.10 ships for Ascend —
the one-to-one mapping the op semantics were designed for:

    moe_init_routing      -> ops.moe_init_routing_v2            (aclnnMoeInitRoutingV2, same arguments)
    moe_finalize_routing  -> ops.moe_finalize_routing           (aclnnMoeFinalizeRouting; our row-arranged index,
                                                                 drop_pad_mode 2, is transposed to its column layout)
    grouped_matmul        -> ops.grouped_matmul(split_item=3, group_type=0)   (aclnnGroupedMatmul, int64 cumsum list)
    grouped_expert_ffn    -> GroupedMatmul(w1), GroupedMatmul(w3), clamped SwiGLU, GroupedMatmul(w2)

Not covered by these vendor ops (the registry falls back to "ascendc" / "composite"): the sqrt-softplus / hash
MoeGatingTopK (MindSpore 2.10 only ships MoeGatingTopKSoftmax), drop/pad finalize with -1 rows (the V1 finalize
API has no drop/pad mode), and our "inactive id" extension of init routing (expert-parallel local selection; on
Ascend EP uses the AlltoAll path). Backward uses MindSpore's registered bprops of these primitives.
Registered for "Ascend" only. NOT RUN: no NPU was available.
"""
from __future__ import annotations


def available() -> bool:
    try:
        import mindspore as ms
        from mindspore import ops
        return ms.get_context("device_target") == "Ascend" and hasattr(ops, "moe_init_routing_v2")
    except Exception:  # pragma: no cover
        return False


def moe_init_routing(x, expert_idx, active_num=0, expert_capacity=0, expert_num=0, drop_pad_mode=0,
                     expert_tokens_count_or_cumsum_flag=1, expert_tokens_before_capacity_flag=True):
    import mindspore as ms
    from mindspore import ops
    return ops.moe_init_routing_v2(x, ops.cast(expert_idx, ms.int32), active_num, expert_capacity, expert_num,
                                   drop_pad_mode, expert_tokens_count_or_cumsum_flag, True)


def moe_finalize_routing(expanded_x, scales, expanded_row_idx, x1=None, x2=None, bias=None, expert_idx=None,
                         drop_pad_mode=-1):
    import mindspore as ms
    from mindspore import ops
    from . import composite
    mode = (2 if len(expanded_x.shape) == 2 else 3) if drop_pad_mode < 0 else drop_pad_mode
    if mode in (1, 3):
        return composite.moe_finalize_routing(expanded_x, scales, expanded_row_idx, x1, x2, bias, expert_idx, mode)
    T, K = scales.shape
    idx = ops.cast(expanded_row_idx.reshape(-1), ms.int32)
    if mode == 2:
        idx = idx.reshape(T, K).swapaxes(0, 1).reshape(-1)          # V2 row-arranged -> V1 column-arranged
    if x1 is None:
        x1 = ops.zeros((T, expanded_x.shape[-1]), expanded_x.dtype)
    eidx = ops.cast(expert_idx, ms.int32) if expert_idx is not None else None
    return ops.moe_finalize_routing(expanded_x, x1, x2, bias, ops.cast(scales, expanded_x.dtype), idx, eidx)


def grouped_matmul(x, weight, group_list, group_list_type=0, transpose_weight=False):
    import mindspore as ms
    from mindspore import ops
    from . import composite
    gl = ops.cast(group_list, ms.int64)
    if group_list_type == 1:
        gl = ops.cumsum(gl, 0)
    y = ops.grouped_matmul([x], [weight], group_list=gl, split_item=3, group_type=0,
                           transpose_b=bool(transpose_weight))[0]
    _, _, inside = composite._group_rows(group_list, group_list_type, x.shape[0], weight.shape[0])
    return y * ops.expand_dims(ops.cast(inside, y.dtype), -1)


def grouped_expert_ffn(x, w1, w2, w3, group_list, swiglu_limit, group_list_type=0):
    from .ascendc import _swiglu
    g = grouped_matmul(x, w1, group_list, group_list_type, True)
    u = grouped_matmul(x, w3, group_list, group_list_type, True)
    return grouped_matmul(_swiglu(g, u, swiglu_limit), w2, group_list, group_list_type, True)
