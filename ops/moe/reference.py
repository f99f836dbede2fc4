"""DeepSeekMoE routing, dispatch, expert FFN and combine in float64 NumPy (DeepSeek's reference Gate / MoE; docs/design.md)."""
import numpy as np


def _score(logits, score_func):
    if score_func == "softmax":
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    if score_func == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    # sqrt(softplus), softplus computed stably
    return np.sqrt(np.logaddexp(0.0, logits))


def moe_route(x, gate_w, bias, topk, route_scale, score_func="sqrtsoftplus", input_ids=None, tid2eid=None,
              gate_temp=1.0, eps=0.0):
    """-> (weights [T, k] float64, expert_ids [T, k] int32).

    Bias ([E], or [T, E] per token — V4.1's bias_vl rows for image tokens) shifts only the selection; hash layers
    take ids from tid2eid[input_ids]. Ties in the biased score go to the lowest expert id (stable sort), the
    documented tie rule of every backend. V4.1: logits are divided by gate_temp, and the top-k weights are
    normalised as w / (Σw + eps) with eps = 1e-20, skipped when topk = 1 (V4: eps 0).
    """
    logits = x.astype(np.float64) @ gate_w.astype(np.float64).T / gate_temp
    s = _score(logits, score_func)
    if tid2eid is not None:
        ids = np.asarray(tid2eid)[np.asarray(input_ids).reshape(-1)].astype(np.int64)
    else:
        sel = s + (np.asarray(bias, np.float64) if bias is not None else 0.0)
        ids = np.argsort(-sel, axis=-1, kind="stable")[:, :topk]
    w = np.take_along_axis(s, ids, axis=-1)
    if score_func != "softmax" and (eps == 0.0 or ids.shape[-1] > 1):
        w = w / (w.sum(-1, keepdims=True) + eps)
    return w * route_scale, ids.astype(np.int32)


def expert_ffn(x, w1, w2, w3, swiglu_limit):
    """SwiGLU with V4's clamp: gate ≤ limit, up ∈ [-limit, limit] (limit 0 disables).

    One expert (x [n, D], w1/w3 [I, D], w2 [D, I]) or stacked experts (x [E, C, D], w1/w3 [E, I, D], w2 [E, D, I]).
    """
    x = np.asarray(x, np.float64)
    g = x @ np.swapaxes(w1, -1, -2).astype(np.float64)
    u = x @ np.swapaxes(w3, -1, -2).astype(np.float64)
    if swiglu_limit > 0:
        u = np.clip(u, -swiglu_limit, swiglu_limit)
        g = np.minimum(g, swiglu_limit)
    h = g / (1.0 + np.exp(-g)) * u
    return h @ np.swapaxes(w2, -1, -2).astype(np.float64)


def moe_forward(x, weights, ids, w1, w2, w3, swiglu_limit):
    """Σ_k weight · expert_{id}(x), token by token: the definition the fused paths must reproduce."""
    x = x.astype(np.float64)
    out = np.zeros_like(x)
    for e in np.unique(ids):
        t, k = np.nonzero(ids == e)
        out[t] += weights[t, k, None] * expert_ffn(x[t], w1[e], w2[e], w3[e], swiglu_limit)
    return out


def moe_dispatch(x, ids, num_experts, capacity):
    """Drop/pad dispatch (MoeInitRoutingV2 drop-pad mode): rows go to [E, C, D] in token order.

    -> (expanded [E, C, D], slot [T, k] int32 = e*C + position, or -1 when the expert was full).
    Ids outside [0, num_experts) are not local (expert parallelism): slot -1, no row.
    """
    T, K = ids.shape
    expanded = np.zeros((num_experts, capacity, x.shape[-1]), np.float64)
    slot = np.full((T, K), -1, np.int32)
    fill = np.zeros(num_experts, np.int64)
    for t in range(T):
        for k in range(K):
            e = ids[t, k]
            if 0 <= e < num_experts and fill[e] < capacity:
                expanded[e, fill[e]] = x[t]
                slot[t, k] = e * capacity + fill[e]
                fill[e] += 1
    return expanded, slot


def moe_combine(expert_out, weights, slot):
    """out[t] = Σ_k weights[t, k] · expert_out.flat[slot[t, k]]; dropped slots (-1) contribute nothing."""
    flat = expert_out.reshape(-1, expert_out.shape[-1]).astype(np.float64)
    T, K = slot.shape
    out = np.zeros((T, flat.shape[-1]))
    for t in range(T):
        for k in range(K):
            if slot[t, k] >= 0:
                out[t] += weights[t, k] * flat[slot[t, k]]
    return out


# ------------------------------------------------------------------------------------------------------------
# Vendor-named operators (aclnn semantics). The model-facing ops above are compositions of these.
# ------------------------------------------------------------------------------------------------------------
NORM_TYPES = {"softmax": 0, "sigmoid": 1, "sqrtsoftplus": 2}


def norm_type_id(norm_type):
    """0 softmax, 1 sigmoid, 2 sqrt(softplus) (the cann-recipes/vllm-ascend hash-capable MoeGatingTopK extension)."""
    return NORM_TYPES[norm_type] if isinstance(norm_type, str) else int(norm_type)


def _stable_topk(sel, k):
    """Indices of the k largest entries per row; ties go to the lowest index (the documented tie rule)."""
    return np.argsort(-sel, axis=-1, kind="stable")[:, :k]


def moe_gating_topk(x, bias=None, k=6, k_group=1, group_count=1, group_select_mode=0, renorm=0, norm_type=2,
                    out_flag=True, routed_scaling_factor=1.0, eps=1e-20, input_ids=None, tid2eid=None):
    """aclnnMoeGatingTopK (+ hash routing): router logits [T, E] -> (y [T, k], expert_idx [T, k] int32, score [T, E]).

    score = norm(x) in float64 here (float32 in every backend, whatever the input dtype); selection on score + bias,
    restricted to the k_group best of group_count groups (group score: max when group_select_mode 0, sum of the
    top-2 when 1); hash layers (tid2eid given) take expert_idx = tid2eid[input_ids] and ignore bias and groups.
    y = score[idx] / (Σ score[idx] + eps) · routed_scaling_factor (softmax: no renormalisation). renorm must be 0.
    Ties in the selection key go to the lowest expert id (lowest group id for groups). `out_flag` is accepted for
    signature compatibility; score is always returned (static graphs want a fixed output arity).
    """
    if renorm != 0:
        raise ValueError("only renorm=0 (top-k first, then normalise) is implemented")
    nt = norm_type_id(norm_type)
    s = _score(np.asarray(x, np.float64), {0: "softmax", 1: "sigmoid", 2: "sqrtsoftplus"}[nt])
    T, E = s.shape
    if tid2eid is not None:
        ids = np.asarray(tid2eid)[np.asarray(input_ids).reshape(-1)].astype(np.int64)
    else:
        sel = s + (np.asarray(bias, np.float64) if bias is not None else 0.0)
        if group_count > 1:
            g = sel.reshape(T, group_count, E // group_count)
            gs = np.sort(g, -1)[..., -2:].sum(-1) if group_select_mode == 1 else g.max(-1)
            keep = np.zeros((T, group_count), bool)
            np.put_along_axis(keep, _stable_topk(gs, k_group), True, -1)
            sel = np.where(np.repeat(keep, E // group_count, -1), sel, -np.inf)
        ids = _stable_topk(sel, k)
    y = np.take_along_axis(s, ids, -1)
    if nt != 0:
        y = y / (y.sum(-1, keepdims=True) + eps)
    return y * routed_scaling_factor, ids.astype(np.int32), s


def moe_init_routing(x, expert_idx, active_num=0, expert_capacity=0, expert_num=0, drop_pad_mode=0,
                     expert_tokens_count_or_cumsum_flag=1, expert_tokens_before_capacity_flag=True):
    """aclnnMoeInitRoutingV2: -> (expanded_x, expanded_row_idx [T*k] int32, tokens_count_or_cumsum [E] int32,
    tokens_before_capacity [E] int32).

    Flattened rows i = t*k + j are key-sorted by expert id, stably (token order inside an expert);
    expanded_row_idx[i] = destination row. Dropless (drop_pad_mode 0): expanded_x [n, H] with n = T*k, or
    min(active_num, T*k) when active_num > 0, expanded_x[dest] = x[i // k]. Drop/pad (1): expanded_x
    [E, C, H], destination e*C + position, -1 once the expert holds C rows; padding rows are zero.
    Count output: cumsum when the flag is 1, per-expert counts otherwise (drop/pad: rows kept, ≤ C).
    tokens_before_capacity: rows per expert before dropping (both modes; overflow = Σ before - Σ kept).
    Extension (aclnn V3 activeExpertRange-like): ids outside [0, expert_num) are inactive: row idx -1, no row.
    """
    x = np.asarray(x)
    T, K = expert_idx.shape
    E = int(expert_num)
    flat = np.asarray(expert_idx).reshape(-1).astype(np.int64)
    valid = (flat >= 0) & (flat < E)
    key = np.where(valid, flat, E)
    order = np.argsort(key, kind="stable")
    counts = np.bincount(key, minlength=E + 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.empty_like(flat)
    pos[order] = np.arange(T * K) - starts[key[order]]
    H = x.shape[-1]
    if drop_pad_mode == 1:
        C = int(expert_capacity)
        keep = valid & (pos < C)
        row = np.where(keep, key * C + pos, -1)
        out = np.zeros((E * C, H), x.dtype)
        out[row[keep]] = x[np.nonzero(keep)[0] // K]
        out = out.reshape(E, C, H)
        kept = np.minimum(counts[:E], C)
    else:
        n = min(active_num, T * K) if active_num > 0 else T * K
        row = np.where(valid, starts[key] + pos, -1)
        out = np.zeros((n, H), x.dtype)
        m = valid & (row < n)
        out[row[m]] = x[np.nonzero(m)[0] // K]
        kept = counts[:E]
    cnt = np.cumsum(kept) if expert_tokens_count_or_cumsum_flag == 1 else kept
    return out, row.astype(np.int32), cnt.astype(np.int32), counts[:E].astype(np.int32)


def _groups(group_list, group_list_type, M):
    gl = np.asarray(group_list).astype(np.int64)
    ends = gl if group_list_type == 0 else np.cumsum(gl)
    ends = np.minimum(np.maximum.accumulate(ends), M)
    starts = np.concatenate([[0], ends[:-1]])
    return starts, ends


def grouped_matmul(x, weight, group_list, group_list_type=0, transpose_weight=False):
    """aclnnGroupedMatmul (split_item 3, group_type 0): y[rows of group e] = x[rows] @ weight[e].

    weight [E, K, N] ([E, N, K] with transpose_weight). group_list: cumulative row ends (type 0) or counts (1).
    Rows past the last group are zero.
    """
    x = np.asarray(x, np.float64)
    w = np.asarray(weight, np.float64)
    if transpose_weight:
        w = np.swapaxes(w, 1, 2)
    y = np.zeros((x.shape[0], w.shape[2]))
    for e, (a, b) in enumerate(zip(*_groups(group_list, group_list_type, x.shape[0]))):
        y[a:b] = x[a:b] @ w[e]
    return y


def grouped_expert_ffn(x, w1, w2, w3, group_list, swiglu_limit, group_list_type=0):
    """Dropless expert FFN on rows grouped by expert (moe_init_routing dropless output): per group e,
    y = expert_ffn(x[rows], w1[e], w2[e], w3[e]). GroupedMatmul(w1|w3) + clamped SwiGLU + GroupedMatmul(w2)."""
    x = np.asarray(x, np.float64)
    y = np.zeros_like(x)
    for e, (a, b) in enumerate(zip(*_groups(group_list, group_list_type, x.shape[0]))):
        if b > a:
            y[a:b] = expert_ffn(x[a:b], w1[e], w2[e], w3[e], swiglu_limit)
    return y


def moe_finalize_routing(expanded_x, scales, expanded_row_idx, x1=None, x2=None, bias=None, expert_idx=None,
                         drop_pad_mode=-1):
    """aclnnMoeFinalizeRoutingV2: out[t] = x1[t] + x2[t] + Σ_k scales[t,k]·(expanded_x[row(t,k)] + bias[expert(t,k)]).

    row(t,k) = expanded_row_idx[t*K + k] for drop_pad_mode 2/3 (MoeInitRoutingV2 layout) or [k*T + t] for 0/1
    (V1 layout); -1 (dropped) or out-of-range rows contribute nothing. drop_pad_mode -1 infers 2 from a 2-D
    expanded_x and 3 from a 3-D [E, C, H] one. x1 is the shared expert's output.
    """
    ex = np.asarray(expanded_x, np.float64)
    mode = (2 if ex.ndim == 2 else 3) if drop_pad_mode < 0 else drop_pad_mode
    flat = ex.reshape(-1, ex.shape[-1])
    sc = np.asarray(scales, np.float64)
    T, K = sc.shape
    idx = np.asarray(expanded_row_idx).reshape(-1).astype(np.int64)
    idx = idx.reshape(K, T).T if mode in (0, 1) else idx.reshape(T, K)
    out = np.zeros((T, flat.shape[-1]))
    if x1 is not None:
        out += x1
    if x2 is not None:
        out += x2
    for t in range(T):
        for k in range(K):
            r = idx[t, k]
            if 0 <= r < flat.shape[0]:
                out[t] += sc[t, k] * (flat[r] + (bias[expert_idx[t, k]] if bias is not None else 0.0))
    return out


def dropped_rows(slot_or_row_idx):
    """Overflow accounting: number of (token, expert) assignments dropped by a capacity (-1 entries)."""
    return int(np.sum(np.asarray(slot_or_row_idx) < 0))
