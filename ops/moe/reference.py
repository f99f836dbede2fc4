"""DeepSeekMoE routing, dispatch, expert FFN and combine in float64 NumPy (spec §5)."""
import numpy as np


def _score(logits, score_func):
    if score_func == "softmax":
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    if score_func == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    # sqrt(softplus), softplus computed stably
    return np.sqrt(np.logaddexp(0.0, logits))


def moe_route(x, gate_w, bias, topk, route_scale, score_func="sqrtsoftplus", input_ids=None, tid2eid=None):
    """-> (weights [T, k] float64, expert_ids [T, k] int32).

    Bias shifts only the selection; hash layers take ids from tid2eid[input_ids]. Ties in the biased score
    go to the lowest expert id (stable sort), the documented tie rule of every backend.
    """
    logits = x.astype(np.float64) @ gate_w.astype(np.float64).T
    s = _score(logits, score_func)
    if tid2eid is not None:
        ids = np.asarray(tid2eid)[np.asarray(input_ids).reshape(-1)].astype(np.int64)
    else:
        sel = s + (np.asarray(bias, np.float64) if bias is not None else 0.0)
        ids = np.argsort(-sel, axis=-1, kind="stable")[:, :topk]
    w = np.take_along_axis(s, ids, axis=-1)
    if score_func != "softmax":
        w = w / w.sum(-1, keepdims=True)
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
    """
    T, K = ids.shape
    expanded = np.zeros((num_experts, capacity, x.shape[-1]), np.float64)
    slot = np.full((T, K), -1, np.int32)
    fill = np.zeros(num_experts, np.int64)
    for t in range(T):
        for k in range(K):
            e = ids[t, k]
            if fill[e] < capacity:
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
