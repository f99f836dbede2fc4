"""DeepSeekMoE as MindSpore composites with static shapes (graph mode, autodiff, drop/pad layout).

Dispatch writes tokens into a fixed [E, C, D] buffer in token order (MoeInitRoutingV2 drop/pad semantics);
with C = T nothing can be dropped, because a token selects each expert at most once.
"""
import mindspore as ms
from mindspore import ops

from ..common import cumsum, linear, segment_sum
from . import reference


def moe_route(x, gate_w, bias, topk, route_scale, score_func="sqrtsoftplus", input_ids=None, tid2eid=None,
              gate_temp=1.0, eps=0.0):
    # Router math in float32 whatever the activation dtype: bf16 routers pick wrong experts.
    logits = linear(ops.cast(x, ms.float32), ops.cast(gate_w, ms.float32))
    if gate_temp != 1.0:                      # DeepSeek-V4.1's router temperature
        logits = logits / gate_temp
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
        ids = stable_topk_ids(ops.stop_gradient(sel), topk)
    ids = ops.cast(ids, ms.int32)
    w = ops.gather_elements(s, 1, ids)
    if score_func != "softmax" and (eps == 0.0 or topk > 1):     # V4.1: eps 1e-20, skipped at top-1
        w = w / (ops.sum(w, -1, True) + eps)
    return w * route_scale, ids


def moe_dispatch(x, ids, num_experts, capacity):
    T, K = ids.shape
    flat = ids.reshape(-1)
    onehot = ops.one_hot(flat, num_experts, ops.ones((), ms.int32), ops.zeros((), ms.int32))
    pos = ops.sum(cumsum(onehot, 0) * onehot, -1) - 1           # position of each row inside its expert
    keep = ops.logical_and(pos >= 0, pos < capacity)                             # pos -1: id outside [0, E) (not local)
    slot = ops.where(keep, flat * capacity + pos, -ops.ones_like(pos))
    seg = ops.where(keep, slot, ops.full_like(slot, num_experts * capacity))   # dropped rows go to a spare segment
    rows = ops.broadcast_to(ops.expand_dims(x, 1), (T, K, x.shape[-1])).reshape(T * K, -1)
    expanded = segment_sum(rows, seg, num_experts * capacity + 1)[:num_experts * capacity]
    return expanded.reshape(num_experts, capacity, -1), slot.reshape(T, K)


_bmm_nt = ops.BatchMatMul(transpose_b=True)     # x @ wᵀ without materialising the transposed [E, I, D] weights


def expert_ffn(expanded, w1, w2, w3, swiglu_limit):
    """Grouped SwiGLU over [E, C, D] with stacked weights w1/w3 [E, I, D], w2 [E, D, I]."""
    g = _bmm_nt(expanded, w1)
    u = _bmm_nt(expanded, w3)
    if swiglu_limit > 0:
        u = ops.clamp(u, -swiglu_limit, swiglu_limit)
        g = ops.minimum(g, swiglu_limit)
    h = g * ops.sigmoid(g) * u
    return _bmm_nt(h, w2)


def moe_combine(expert_out, weights, slot):
    T, K = slot.shape
    flat = expert_out.reshape(-1, expert_out.shape[-1])
    valid = slot >= 0
    rows = ops.gather(flat, ops.where(valid, slot, ops.zeros_like(slot)).reshape(-1), 0).reshape(T, K, -1)
    w = ops.where(valid, weights, ops.zeros_like(weights))
    return ops.sum(rows * ops.expand_dims(ops.cast(w, rows.dtype), -1), 1)


# ------------------------------------------------------------------------------------------------------------
# Vendor-named operators (aclnn semantics; see reference.py for the exact contracts).
# ------------------------------------------------------------------------------------------------------------
def stable_topk_ids(sel, k):
    """int32 [T, k] indices of the k largest entries per row, ordered by value (desc) then index (asc).

    ops.topk on CPU breaks ties arbitrarily, so only its k-th value is used: entries above it are in, tied entries
    are admitted lowest index first; then the k winners are ordered by (value desc, index asc) with index-only keys.
    """
    E = sel.shape[-1]
    v, _ = ops.topk(sel, k)
    thr = v[:, k - 1:k]
    gt = sel > thr
    eq = sel == thr
    n_gt = ops.sum(ops.cast(gt, ms.int32), -1, True)
    eq_rank = cumsum(ops.cast(eq, ms.int32), -1)
    chosen = ops.logical_or(gt, ops.logical_and(eq, eq_rank <= k - n_gt))
    iota = ops.cast(ops.arange(E), ms.float32)
    key = ops.where(chosen, E - iota, ops.zeros_like(iota))          # chosen entries, lowest index first
    _, ids = ops.topk(key, k)
    vals = ops.gather_elements(sel, 1, ids)
    vj = ops.expand_dims(vals, 2)
    vm = ops.expand_dims(vals, 1)
    jj = ops.arange(k).reshape(1, k, 1)
    mm = ops.arange(k).reshape(1, 1, k)
    before = ops.logical_or(vm > vj, ops.logical_and(vm == vj, mm < jj))                    # [T, j, m]: m ranks before j
    rank = ops.sum(ops.cast(before, ms.int32), -1)
    _, perm = ops.topk(ops.cast(k - rank, ms.float32), k)
    return ops.cast(ops.gather_elements(ids, 1, perm), ms.int32)


def _scores(x, norm_type):
    if norm_type == 0:
        return ops.softmax(x, -1)
    if norm_type == 1:
        return ops.sigmoid(x)
    return ops.sqrt(ops.softplus(x))


def moe_gating_topk(x, bias=None, k=6, k_group=1, group_count=1, group_select_mode=0, renorm=0, norm_type=2,
                    out_flag=True, routed_scaling_factor=1.0, eps=1e-20, input_ids=None, tid2eid=None):
    if renorm != 0:
        raise ValueError("only renorm=0 is implemented")
    nt = reference.norm_type_id(norm_type)
    s = _scores(ops.cast(x, ms.float32), nt)
    T, E = s.shape
    if tid2eid is not None:
        ids = ops.cast(ops.gather(tid2eid, input_ids.reshape(-1), 0), ms.int32)
    else:
        sel = ops.stop_gradient(s if bias is None else s + ops.cast(bias, ms.float32))
        if group_count > 1:
            g = sel.reshape(T, group_count, E // group_count)
            if group_select_mode == 1:
                top2, _ = ops.topk(g, 2)
                gs = ops.sum(top2, -1)
            else:
                gs = ops.max(g, -1)[0]
            gid = stable_topk_ids(gs, k_group)
            keep = ops.sum(ops.one_hot(gid, group_count, ops.ones((), ms.float32), ops.zeros((), ms.float32)), 1)
            keep = ops.broadcast_to(ops.expand_dims(keep, -1), g.shape).reshape(T, E) > 0
            sel = ops.where(keep, sel, ops.full_like(sel, -3.0e38))
        ids = stable_topk_ids(sel, k)
    y = ops.gather_elements(s, 1, ids)
    if nt != 0:
        y = y / (ops.sum(y, -1, True) + eps)
    return y * routed_scaling_factor, ids, s


def moe_init_routing(x, expert_idx, active_num=0, expert_capacity=0, expert_num=0, drop_pad_mode=0,
                     expert_tokens_count_or_cumsum_flag=1, expert_tokens_before_capacity_flag=True):
    T, K = expert_idx.shape
    E = expert_num
    flat = ops.cast(expert_idx.reshape(-1), ms.int32)
    valid = ops.logical_and(flat >= 0, flat < E)
    key = ops.where(valid, flat, ops.full_like(flat, E))
    onehot = ops.one_hot(key, E + 1, ops.ones((), ms.int32), ops.zeros((), ms.int32))
    pos = ops.sum(cumsum(onehot, 0) * onehot, -1) - 1
    counts = ops.cast(ops.sum(onehot, 0), ms.int32)                 # [E + 1], last = inactive rows
    rows = ops.broadcast_to(ops.expand_dims(x, 1), (T, K, x.shape[-1])).reshape(T * K, -1)
    before = counts[:E]
    if drop_pad_mode == 1:
        C = expert_capacity
        keep = ops.logical_and(valid, pos < C)
        row = ops.where(keep, key * C + pos, -ops.ones_like(pos))
        seg = ops.where(keep, row, ops.full_like(row, E * C))
        out = segment_sum(rows, seg, E * C + 1)[:E * C].reshape(E, C, -1)
        kept = ops.minimum(before, C)
    else:
        n = min(active_num, T * K) if active_num > 0 else T * K
        starts = cumsum(counts, 0) - counts
        dest = ops.gather(starts, key, 0) + pos
        row = ops.where(valid, dest, -ops.ones_like(dest))
        seg = ops.where(ops.logical_and(valid, dest < n), dest, ops.full_like(dest, n))
        out = segment_sum(rows, seg, n + 1)[:n]
        kept = before
    cnt = cumsum(kept, 0) if expert_tokens_count_or_cumsum_flag == 1 else kept
    return out, ops.cast(row, ms.int32), ops.cast(cnt, ms.int32), before


def _group_rows(group_list, group_list_type, M, E):
    """Per row: its group g in [0, E] (E = past the last group) and its position inside the group."""
    gl = ops.cast(group_list, ms.int32)
    ends = gl if group_list_type == 0 else cumsum(gl, 0)
    ends = ops.minimum(ends, M)
    starts = ops.concat((ops.zeros((1,), ms.int32), ends[:-1]))
    r = ops.arange(M).astype(ms.int32).reshape(M, 1)
    g = ops.sum(ops.cast(ops.expand_dims(ends, 0) <= r, ms.int32), -1)             # [M]
    inside = g < E
    gs = ops.where(inside, g, ops.zeros_like(g))
    pos = r.reshape(-1) - ops.gather(starts, gs, 0)
    return gs, pos, inside


def _pad_groups(x, group_list, group_list_type, E):
    """Rows grouped by expert -> [E, M, K] zero-padded (the composite's static-shape price: E·M rows)."""
    M = x.shape[0]
    g, pos, inside = _group_rows(group_list, group_list_type, M, E)
    flat = g * M + pos
    seg = ops.where(inside, flat, ops.full_like(flat, E * M))
    padded = segment_sum(x, seg, E * M + 1)[:E * M].reshape(E, M, -1)
    return padded, flat, inside


def _unpad_groups(y, flat, inside):
    E, M, N = y.shape
    rows = ops.gather(y.reshape(E * M, N), ops.where(inside, flat, ops.zeros_like(flat)), 0)
    return rows * ops.expand_dims(ops.cast(inside, rows.dtype), -1)


def grouped_matmul(x, weight, group_list, group_list_type=0, transpose_weight=False):
    E = weight.shape[0]
    padded, flat, inside = _pad_groups(x, group_list, group_list_type, E)
    y = ops.bmm(padded, weight.swapaxes(1, 2) if transpose_weight else weight)
    return _unpad_groups(y, flat, inside)


def grouped_expert_ffn(x, w1, w2, w3, group_list, swiglu_limit, group_list_type=0):
    padded, flat, inside = _pad_groups(x, group_list, group_list_type, w1.shape[0])
    return _unpad_groups(expert_ffn(padded, w1, w2, w3, swiglu_limit), flat, inside)


def moe_finalize_routing(expanded_x, scales, expanded_row_idx, x1=None, x2=None, bias=None, expert_idx=None,
                         drop_pad_mode=-1):
    mode = (2 if len(expanded_x.shape) == 2 else 3) if drop_pad_mode < 0 else drop_pad_mode
    H = expanded_x.shape[-1]
    flat = expanded_x.reshape(-1, H)
    R = flat.shape[0]
    T, K = scales.shape
    idx = ops.cast(expanded_row_idx, ms.int32)
    idx = idx.reshape(K, T).swapaxes(0, 1) if mode in (0, 1) else idx.reshape(T, K)
    valid = ops.logical_and(idx >= 0, idx < R)
    rows = ops.gather(flat, ops.where(valid, idx, ops.zeros_like(idx)).reshape(-1), 0).reshape(T, K, H)
    if bias is not None:
        rows = rows + ops.gather(bias, ops.cast(expert_idx, ms.int32).reshape(-1), 0).reshape(T, K, H)
    w = ops.where(valid, ops.cast(scales, rows.dtype), ops.zeros((), rows.dtype))
    out = ops.sum(rows * ops.expand_dims(w, -1), 1)
    if x1 is not None:
        out = out + x1
    if x2 is not None:
        out = out + x2
    return out


def dropped_rows(slot_or_row_idx):
    """Overflow accounting inside a graph: int32 count of -1 entries (dropped token→expert assignments)."""
    return ops.cast(ops.sum(ops.cast(slot_or_row_idx < 0, ms.float32)), ms.int32)
