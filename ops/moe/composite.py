"""DeepSeekMoE as MindSpore composites with static shapes (graph mode, autodiff, drop/pad layout).

Dispatch writes tokens into a fixed [E, C, D] buffer in token order (MoeInitRoutingV2 drop/pad semantics);
with C = T nothing can be dropped, because a token selects each expert at most once.
"""
import mindspore as ms
from mindspore import ops

from ..common import linear


def moe_route(x, gate_w, bias, topk, route_scale, score_func="sqrtsoftplus", input_ids=None, tid2eid=None):
    # Router math in float32 whatever the activation dtype: bf16 routers pick wrong experts.
    logits = linear(ops.cast(x, ms.float32), ops.cast(gate_w, ms.float32))
    if score_func == "softmax":
        s = ops.softmax(logits, -1)
    elif score_func == "sigmoid":
        s = ops.sigmoid(logits)
    else:
        s = ops.sqrt(ops.softplus(logits))
    if tid2eid is not None:
        ids = ops.gather(tid2eid, input_ids.reshape(-1), 0)
    else:
        sel = s if bias is None else s + bias
        _, ids = ops.topk(ops.stop_gradient(sel), topk)
    ids = ops.cast(ids, ms.int32)
    w = ops.gather_elements(s, 1, ids)
    if score_func != "softmax":
        w = w / ops.sum(w, -1, True)
    return w * route_scale, ids


def moe_dispatch(x, ids, num_experts, capacity):
    T, K = ids.shape
    flat = ids.reshape(-1)
    onehot = ops.one_hot(flat, num_experts, ops.ones((), ms.int32), ops.zeros((), ms.int32))
    pos = ops.sum(ops.cumsum(onehot, 0) * onehot, -1) - 1           # position of each row inside its expert
    keep = pos < capacity
    slot = ops.where(keep, flat * capacity + pos, -ops.ones_like(pos))
    seg = ops.where(keep, slot, ops.full_like(slot, num_experts * capacity))   # dropped rows go to a spare segment
    rows = ops.broadcast_to(ops.expand_dims(x, 1), (T, K, x.shape[-1])).reshape(T * K, -1)
    expanded = ops.unsorted_segment_sum(rows, seg, num_experts * capacity + 1)[:num_experts * capacity]
    return expanded.reshape(num_experts, capacity, -1), slot.reshape(T, K)


def expert_ffn(expanded, w1, w2, w3, swiglu_limit):
    """Grouped SwiGLU over [E, C, D] with stacked weights w1/w3 [E, I, D], w2 [E, D, I]."""
    g = ops.bmm(expanded, w1.swapaxes(1, 2))
    u = ops.bmm(expanded, w3.swapaxes(1, 2))
    if swiglu_limit > 0:
        u = ops.clamp(u, -swiglu_limit, swiglu_limit)
        g = ops.minimum(g, swiglu_limit)
    h = g * ops.sigmoid(g) * u
    return ops.bmm(h, w2.swapaxes(1, 2))


def moe_combine(expert_out, weights, slot):
    T, K = slot.shape
    flat = expert_out.reshape(-1, expert_out.shape[-1])
    valid = slot >= 0
    rows = ops.gather(flat, ops.where(valid, slot, ops.zeros_like(slot)).reshape(-1), 0).reshape(T, K, -1)
    w = ops.where(valid, weights, ops.zeros_like(weights))
    return ops.sum(rows * ops.expand_dims(ops.cast(w, rows.dtype), -1), 1)
