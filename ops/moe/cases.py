"""Parity cases of the MoE family: random, skewed (all tokens to one expert), hash routing, overflow."""
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
]
