"""Routed-expert block of a DeepSeekMoE layer built from the vendor-named ops (registry-selected backends).

    weights, ids = moe_route(x, ...)                                   (the model's Gate)
    y, dropped  = MoeExperts(E, limit, capacity | capacity_factor=cf)(x, weights, ids, w1, w2, w3, shared_out)

Dropless (capacity=None; inference, and training when memory allows):
    moe_init_routing(dropless, cumsum) -> grouped_expert_ffn (rows grouped by expert, no padding)
    -> moe_finalize_routing(drop_pad_mode=2, x1=shared_out)
Fixed capacity (static [E, C, D] shapes; graph-mode training; C given, or ceil(cf·T·k/E) from the token count):
    moe_init_routing(drop/pad, C) -> expert_ffn [E, C, D] -> moe_finalize_routing(drop_pad_mode=3, x1=shared_out)
`dropped` (int32 scalar) = token->expert assignments that overflowed a full expert (always 0 dropless), computed
from the routing histogram (tokens_before_capacity - kept); ids outside [0, E) (other ranks' experts under
expert parallelism) are neither routed nor counted as dropped.

On Ascend the same calls map one-to-one onto aclnnMoeInitRoutingV2 / GroupedMatmul(+Swiglu) /
aclnnMoeFinalizeRoutingV2.
"""
from __future__ import annotations

from typing import Optional

import mindspore as ms
from mindspore import nn, ops

from ..registry import resolve


def default_capacity(tokens: int, topk: int, num_experts: int, capacity_factor: float = 1.25) -> int:
    """ceil(cf · T · k / E), at least 1 and at most T (a token picks an expert at most once)."""
    c = -(-int(capacity_factor * tokens * topk) // num_experts)
    return max(1, min(tokens, c))


class MoeExperts(nn.Cell):
    """Routed experts (+ the shared expert's output folded into the combine). No parameters: the expert weights
    are passed in (stacked [E, I, D] / [E, D, I]), so the model keeps its release parameter names."""

    def __init__(self, num_experts: int, swiglu_limit: float, capacity: Optional[int] = None,
                 backend: Optional[str] = None, capacity_factor: Optional[float] = None):
        super().__init__()
        if capacity is not None and capacity_factor is not None:
            raise ValueError("give either a fixed capacity or a capacity_factor, not both")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be > 0, got {capacity_factor}")
        self.num_experts, self.limit, self.capacity = num_experts, float(swiglu_limit), capacity
        self.capacity_factor = capacity_factor
        self._init_routing = resolve("moe_init_routing", backend).fn
        self._finalize = resolve("moe_finalize_routing", backend).fn
        self._grouped_ffn = resolve("grouped_expert_ffn", backend).fn
        self._padded_ffn = resolve("expert_ffn", backend).fn

    def construct(self, x, weights, ids, w1, w2, w3, shared_out=None):
        capacity = self.capacity
        if self.capacity_factor is not None:        # shapes are static in graph mode: C is a compile-time int
            capacity = default_capacity(x.shape[0], ids.shape[1], self.num_experts, self.capacity_factor)
        if capacity is None:
            expanded, row, cumsum, _ = self._init_routing(x, ids, 0, 0, self.num_experts, 0, 1)
            out = self._grouped_ffn(expanded, w1, w2, w3, cumsum, self.limit)
            y = self._finalize(out, weights, row, shared_out, None, None, None, 2)
            return y, ops.zeros((), ms.int32)
        expanded, row, kept, before = self._init_routing(x, ids, 0, capacity, self.num_experts, 1, 2)
        out = self._padded_ffn(expanded, w1, w2, w3, self.limit)
        y = self._finalize(out, weights, row, shared_out, None, None, None, 3)
        dropped = ops.cast(ops.sum(ops.cast(before - kept, ms.float32)), ms.int32)
        return y, dropped
