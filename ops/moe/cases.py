"""Parity cases of the MoE family: random, skewed (all tokens to one expert), empty experts, capacity overflow,
ties (lowest expert id wins), hash routing, inactive (non-local) expert ids, active_num truncation."""
import numpy as np

from ..parity import Case


def _route(T, D, E, k, hashed=False, skew=False):
    def make(rng):
        x = rng.standard_normal((T, D))
        w = rng.standard_normal((E, D)) / np.sqrt(D)
        bias = rng.standard_normal(E) * 0.1
        if skew:
            bias[E // 2] = 100.0                   # every token selects expert E//2 first
        kw = {"topk": k, "route_scale": 1.5, "score_func": "sqrtsoftplus"}
        if hashed:
            tid2eid = np.stack([rng.permutation(E)[:k] for _ in range(32)]).astype(np.int64)
            ids = rng.integers(0, 32, T).astype(np.int64)
            return (x, w, None), dict(kw, input_ids=ids, tid2eid=tid2eid)
        return (x, w, bias), kw
    return make


def _dispatch(T, D, E, k, capacity, skew=False):
    def make(rng):
        ids = np.stack([rng.permutation(E)[:k] for _ in range(T)])
        if skew:
            ids[:, 0] = 0
            ids[:, 1:] = np.stack([rng.permutation(np.arange(1, E))[:k - 1] for _ in range(T)])
        return (rng.standard_normal((T, D)), ids.astype(np.int32)), {"num_experts": E, "capacity": capacity}
    return make


def _ffn(E, C, D, I, limit):
    def make(rng):
        return (rng.standard_normal((E, C, D)) * 2, rng.standard_normal((E, I, D)) / np.sqrt(D) * 3,
                rng.standard_normal((E, D, I)) / np.sqrt(I), rng.standard_normal((E, I, D)) / np.sqrt(D) * 3), \
            {"swiglu_limit": limit}
    return make


def _combine(T, E, C, D, k, drop_frac=0.0):
    def make(rng):
        slot = rng.choice(E * C, size=(T, k), replace=False).reshape(T, k).astype(np.int32)
        slot[rng.random((T, k)) < drop_frac] = -1
        return (rng.standard_normal((E, C, D)), rng.random((T, k)), slot), {}
    return make


def _gating(T, E, k, norm_type=2, bias=True, skew=False, ties=False, groups=None, hashed=False):
    def make(rng):
        x = rng.standard_normal((T, E)) * 2
        if ties:                                   # few distinct logits: many exact ties in score and selection
            x = rng.integers(-1, 2, (T, E)).astype(np.float64)
        b = rng.standard_normal(E) * 0.1 if bias else None
        if skew:
            b[3] = 100.0
        kw = {"k": k, "norm_type": norm_type, "routed_scaling_factor": 1.5}
        if groups:
            kw.update(group_count=groups[0], k_group=groups[1], group_select_mode=groups[2])
        if hashed:
            tid2eid = np.stack([rng.permutation(E)[:k] for _ in range(50)]).astype(np.int64)
            kw.update(input_ids=rng.integers(0, 50, T).astype(np.int64), tid2eid=tid2eid)
            b = None
        return (x, b), kw
    return make


def _init_routing(T, D, E, k, mode=0, capacity=0, skew=False, flag=1, active=0, inactive=False):
    def make(rng):
        ids = np.stack([rng.permutation(E)[:k] for _ in range(T)])
        if skew:
            ids[:, 0] = 0
            ids[:, 1:] = np.stack([rng.permutation(np.arange(1, E))[:k - 1] for _ in range(T)])
        if inactive:                               # expert-parallel local view: ids of other ranks' experts
            ids = np.stack([rng.permutation(3 * E)[:k] - E for _ in range(T)])
        return (rng.standard_normal((T, D)), ids.astype(np.int32)), dict(
            active_num=active, expert_capacity=capacity, expert_num=E, drop_pad_mode=mode,
            expert_tokens_count_or_cumsum_flag=flag)
    return make


def _gmm(counts, K, N, ltype=0, transpose=False, M=None):
    def make(rng):
        c = np.asarray(counts)
        m = M if M is not None else int(c.sum())
        E = len(c)
        gl = np.cumsum(c) if ltype == 0 else c
        w = rng.standard_normal((E, N, K) if transpose else (E, K, N)) / np.sqrt(K)
        return (rng.standard_normal((m, K)), w, gl.astype(np.int32)), dict(group_list_type=ltype,
                                                                            transpose_weight=transpose)
    return make


def _gffn(counts, D, I, limit, M=None):
    def make(rng):
        c = np.asarray(counts)
        m = M if M is not None else int(c.sum())
        E = len(c)
        return (rng.standard_normal((m, D)) * 2, rng.standard_normal((E, I, D)) / np.sqrt(D) * 3,
                rng.standard_normal((E, D, I)) / np.sqrt(I), rng.standard_normal((E, I, D)) / np.sqrt(D) * 3,
                np.cumsum(c).astype(np.int32)), {"swiglu_limit": limit}
    return make


def _finalize(T, K, H, E=4, C=0, mode=2, x1=False, x2=False, bias=False, drop_frac=0.0):
    def make(rng):
        if mode in (1, 3):
            ex = rng.standard_normal((E, C, H))
            row = rng.choice(E * C, size=T * K, replace=False)
            row[rng.random(T * K) < drop_frac] = -1
        else:
            ex = rng.standard_normal((T * K, H))
            row = rng.permutation(T * K)
        args = [ex, rng.random((T, K)), row.astype(np.int32),
                rng.standard_normal((T, H)) if x1 else None, rng.standard_normal((T, H)) if x2 else None,
                rng.standard_normal((E, H)) if bias else None,
                rng.integers(0, E, (T, K)).astype(np.int32) if bias else None]
        return tuple(args), {"drop_pad_mode": mode}
    return make


CASES = [
    Case("moe_route", "T16_E8_k2", _route(16, 32, 8, 2), grad_args=(0, 1)),
    Case("moe_route", "T64_E256_k6", _route(64, 64, 256, 6)),
    Case("moe_route", "skewed_bias", _route(16, 32, 8, 2, skew=True), grad_args=(0,)),
    Case("moe_route", "hash", _route(16, 32, 8, 2, hashed=True), grad_args=(0, 1)),
    Case("moe_dispatch", "dropless", _dispatch(12, 16, 8, 2, capacity=12), grad_args=(0,)),
    Case("moe_dispatch", "overflow", _dispatch(12, 16, 4, 2, capacity=3, skew=True), grad_args=(0,)),
    Case("moe_dispatch", "empty_experts", _dispatch(3, 8, 16, 2, capacity=3), grad_args=(0,)),
    Case("expert_ffn", "clamp_active", _ffn(4, 6, 16, 24, 10.0), grad_args=(0, 1, 2, 3)),
    Case("expert_ffn", "no_clamp", _ffn(3, 5, 16, 8, 0.0), grad_args=(0, 1, 2, 3)),
    Case("moe_combine", "T10_k2", _combine(10, 4, 6, 16, 2), grad_args=(0, 1)),
    Case("moe_combine", "with_drops", _combine(7, 4, 6, 16, 3, drop_frac=0.3), grad_args=(0, 1)),
    # ---- vendor-named ops
    Case("moe_gating_topk", "sqrtsoftplus_bias", _gating(32, 16, 4), grad_args=(0,)),
    Case("moe_gating_topk", "sigmoid", _gating(32, 16, 4, norm_type=1), grad_args=(0,)),
    Case("moe_gating_topk", "softmax", _gating(32, 16, 4, norm_type=0, bias=False), grad_args=(0,)),
    Case("moe_gating_topk", "ties_lowest_id", _gating(64, 16, 6, bias=False, ties=True)),
    Case("moe_gating_topk", "skewed_bias", _gating(16, 16, 4, skew=True), grad_args=(0,)),
    Case("moe_gating_topk", "grouped_top2sum", _gating(24, 32, 4, groups=(4, 2, 1)), grad_args=(0,)),
    Case("moe_gating_topk", "grouped_max", _gating(24, 32, 4, norm_type=1, groups=(8, 3, 0))),
    Case("moe_gating_topk", "hash", _gating(16, 16, 6, hashed=True), grad_args=(0,)),
    Case("moe_gating_topk", "E256_k6", _gating(64, 256, 6)),
    Case("moe_init_routing", "dropless", _init_routing(16, 8, 8, 2), grad_args=(0,)),
    Case("moe_init_routing", "dropless_skewed", _init_routing(16, 8, 8, 3, skew=True), grad_args=(0,)),
    Case("moe_init_routing", "dropless_empty_experts", _init_routing(3, 8, 16, 2, flag=2), grad_args=(0,)),
    Case("moe_init_routing", "active_num", _init_routing(12, 8, 4, 2, active=10), grad_args=(0,)),
    Case("moe_init_routing", "droppad_overflow", _init_routing(12, 8, 4, 2, mode=1, capacity=3, skew=True),
         grad_args=(0,)),
    Case("moe_init_routing", "droppad_empty", _init_routing(3, 8, 16, 2, mode=1, capacity=2), grad_args=(0,)),
    Case("moe_init_routing", "inactive_ids", _init_routing(10, 8, 4, 3, inactive=True), grad_args=(0,)),
    Case("moe_init_routing", "inactive_droppad", _init_routing(10, 8, 4, 3, mode=1, capacity=2, inactive=True),
         grad_args=(0,)),
    Case("grouped_matmul", "cumsum_empty_tail", _gmm([5, 0, 7, 4], 12, 10, M=20), grad_args=(0, 1)),
    Case("grouped_matmul", "count_transposed", _gmm([3, 6, 0, 2, 5], 9, 14, ltype=1, transpose=True),
         grad_args=(0, 1)),
    Case("grouped_matmul", "skewed_one_group", _gmm([0, 0, 17, 0], 16, 8), grad_args=(0, 1)),
    Case("grouped_matmul", "all_empty", _gmm([0, 0, 0], 8, 8, M=5), grad_args=(0, 1)),
    Case("grouped_expert_ffn", "clamp_empty_groups", _gffn([4, 0, 9, 3], 16, 24, 10.0, M=18),
         grad_args=(0, 1, 2, 3)),
    Case("grouped_expert_ffn", "skewed_no_clamp", _gffn([0, 11, 0], 16, 8, 0.0), grad_args=(0, 1, 2, 3)),
    Case("moe_finalize_routing", "dropless_shared", _finalize(9, 3, 16, x1=True), grad_args=(0, 1, 3)),
    Case("moe_finalize_routing", "droppad_drops", _finalize(8, 2, 16, E=4, C=5, mode=3, drop_frac=0.3),
         grad_args=(0, 1)),
    Case("moe_finalize_routing", "column_bias_x2", _finalize(7, 2, 8, mode=0, x1=True, x2=True, bias=True),
         grad_args=(0, 1, 3, 4, 5)),
]
