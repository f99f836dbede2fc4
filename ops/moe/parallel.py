"""Expert parallelism (EP) for the MoE layer: each of `ep` ranks owns experts [r·E/ep, (r+1)·E/ep).

Two exchange schemes, selected by platform (mode="auto"):

* "allgather" (CPU, and any dropless run): AllGather tokens, routing weights and expert ids from all ranks,
  route every gathered token to the local experts only (ids shifted by -r·E/ep; other ranks' ids fall outside
  [0, E/ep) and are inactive in moe_init_routing), compute the partial combine for all gathered tokens, then
  ReduceScatter(sum) hands each rank the sum over ranks for its own tokens. MindSpore-CPU has neither
  ReduceScatter nor AlltoAll (and AllGather's built-in bprop is a ReduceScatter), so on CPU the reduction is
  AllReduce + own slice and the token AllGather carries a custom bprop (AllReduce + own slice); on Ascend the
  native ReduceScatter/AllGather are used. Traffic: ep·T·D in, ep·T·D out per rank.
* "alltoall" (Ascend, fixed capacity): GShard-style static exchange. Each rank dispatches its own tokens into
  [E, C, D] (drop/pad), AlltoAll sends expert block r to rank r, the local experts run on [E/ep, ep·C, D],
  AlltoAll returns the outputs, and the combine is local. Traffic: k·C·E/… rows instead of all tokens.
  `exchange` can be injected: the CPU tests run this variant with an AllGather-based AlltoAll emulation.

The shared expert is data-parallel (computed on the rank's own tokens) and added after the exchange.
MindSpore-CPU's AllGather only runs on the world group; over a sub-group (created with create_group) the CPU
gather is an AllReduce(sum) of a zero buffer holding this rank's block (exact; ep times the traffic).
`capacity_factor` (instead of a fixed capacity): C = ceil(cf·T·k/E) from the token count at compile time — in
allgather mode T = all gathered tokens, so ep = dp ranks keep exactly the assignments one process with the whole
batch keeps; in alltoall mode T = this rank's tokens (capacity per source rank).
Backward: AllGather <-> ReduceScatter and AlltoAll <-> AlltoAll are each other's adjoints (MindSpore bprops).
"""
from __future__ import annotations

from typing import Callable, Optional

import mindspore as ms
from mindspore import nn, ops

from ..registry import resolve
from .layer import MoeExperts, default_capacity


def _world_group():
    from mindspore.communication import GlobalComm
    return GlobalComm.WORLD_COMM_GROUP


def select_mode(mode: str, capacity: Optional[int], device: Optional[str] = None) -> str:
    if mode != "auto":
        return mode
    device = device or ms.get_context("device_target")
    return "alltoall" if device == "Ascend" and capacity is not None else "allgather"


class GatherWithAllReduceGrad(nn.Cell):
    """AllGather along dim 0 whose backward is AllReduce(sum) + this rank's slice (= ReduceScatter), for CPU.
    On a sub-group (not the world group) the forward is an AllReduce of a zero buffer holding x at this rank's
    block, since MindSpore-CPU's AllGather only accepts the world group."""

    def __init__(self, ep: int, rank: int, group=None):
        super().__init__()
        group = group or _world_group()
        self.ep, self.rank = ep, rank
        self.native = group == _world_group()
        if self.native:
            self.gather = ops.AllGather(group)
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM, group)

    def construct(self, x):
        if self.native:
            return self.gather(x)
        return self.all_reduce(_placed(x, self.ep, self.rank))

    def bprop(self, x, out, dout):
        n = x.shape[0]
        return (self.all_reduce(dout)[self.rank * n:(self.rank + 1) * n],)


def _placed(x, n, me):
    """[n·len(x), ...] zeros with x at block `me` (the AllReduce form of AllGather). Written as tile x mask:
    a concat with zeros_like blocks trips a MindSpore 2.10 autodiff bug ("The func graph is empty ... zeros_like")
    inside the expert-parallel layer's gradient graph."""
    shape = x.shape
    tiled = ops.tile(x, (n,) + (1,) * (len(shape) - 1)).reshape((n, shape[0]) + shape[1:])
    mask = ops.cast(ops.arange(n) == me, x.dtype).reshape((n,) + (1,) * len(shape))
    return (tiled * mask).reshape((n * shape[0],) + shape[1:])


class IndexGatherCPU(nn.Cell):
    """AllGather of an int32 index tensor over a CPU sub-group: float32 AllReduce of the placed blocks (exact
    for |ids| < 2^24), no gradient."""

    def __init__(self, ep: int, rank: int, group):
        super().__init__()
        self.ep, self.rank = ep, rank
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM, group)

    def construct(self, x):
        return ops.cast(self.all_reduce(_placed(ops.cast(x, ms.float32), self.ep, self.rank)), x.dtype)

    def bprop(self, x, out, dout):
        return (ops.zeros_like(x),)


class AllReduceSlice(nn.Cell):
    """ReduceScatter(sum) along dim 0 as AllReduce + own slice (MindSpore-CPU has no ReduceScatter)."""

    def __init__(self, ep: int, rank: int, group=None):
        super().__init__()
        self.ep, self.rank = ep, rank
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM, group or _world_group())

    def construct(self, x):
        n = x.shape[0] // self.ep
        return self.all_reduce(x)[self.rank * n:(self.rank + 1) * n]


def collectives(ep: int, rank: int, group=None, device: Optional[str] = None):
    """(gather for float tensors, gather for index tensors, reduce-scatter) suited to the platform."""
    group = group or _world_group()
    device = device or ms.get_context("device_target")
    if device == "CPU":
        ids = ops.AllGather(group) if group == _world_group() else IndexGatherCPU(ep, rank, group)
        return GatherWithAllReduceGrad(ep, rank, group), ids, AllReduceSlice(ep, rank, group)
    return ops.AllGather(group), ops.AllGather(group), ops.ReduceScatter(ops.ReduceOp.SUM, group)


class AllGatherAlltoAll(nn.Cell):
    """AlltoAll(split_dim=0, concat_dim=0) emulated with AllGather + local slice (CPU has no AlltoAll):
    rank r receives block r of every rank's input, concatenated in rank order."""

    def __init__(self, ep: int, rank: int, group=None):
        super().__init__()
        self.ep, self.rank = ep, rank
        self.gather = collectives(ep, rank, group)[0]

    def construct(self, x):
        g = self.gather(x)                                           # [ep_src * n, ...]
        n = x.shape[0] // self.ep
        g = g.reshape((self.ep, self.ep, n) + x.shape[1:])           # [src, dst, n, ...]
        return g[:, self.rank].reshape((self.ep * n,) + x.shape[1:])


class ExpertParallelMoeExperts(nn.Cell):
    """Routed experts across `ep` ranks; inputs and output are this rank's own tokens.

    construct(x [T, D], weights [T, k], ids [T, k] (global expert ids), w1/w2/w3 of the LOCAL experts
    [E/ep, ...], shared_out [T, D] | None) -> (y [T, D], dropped int32: overflow on this rank's experts).
    """

    def __init__(self, num_experts: int, swiglu_limit: float, ep: int, rank: int, capacity: Optional[int] = None,
                 mode: str = "auto", group=None, exchange: Optional[Callable] = None, backend: Optional[str] = None,
                 capacity_factor: Optional[float] = None):
        super().__init__()
        if num_experts % ep:
            raise ValueError(f"num_experts {num_experts} is not divisible by ep {ep}")
        if capacity is not None and capacity_factor is not None:
            raise ValueError("give either a fixed capacity or a capacity_factor, not both")
        self.ep, self.rank, self.capacity = ep, rank, capacity
        self.capacity_factor = capacity_factor
        self.num_experts, self.local = num_experts, num_experts // ep
        self.offset = rank * self.local
        self.limit = float(swiglu_limit)
        fixed = capacity if capacity_factor is None else -1          # -1: a capacity decided at compile time
        self.mode = select_mode(mode, fixed)
        group = group or _world_group()
        if self.mode == "allgather":
            self.gather, self.gather_ids, self.reduce_scatter = collectives(ep, rank, group)
            self.experts = MoeExperts(self.local, swiglu_limit, capacity, backend)
            if capacity_factor is not None:
                self._init_routing = resolve("moe_init_routing", backend).fn
                self._finalize = resolve("moe_finalize_routing", backend).fn
                self._ffn = resolve("expert_ffn", backend).fn
        elif self.mode == "alltoall":
            if fixed is None:
                raise ValueError("the AlltoAll EP path needs a fixed capacity (static shapes)")
            self.exchange = exchange if exchange is not None else ops.AlltoAll(ep, 0, 0, group)
            self._init_routing = resolve("moe_init_routing", backend).fn
            self._finalize = resolve("moe_finalize_routing", backend).fn
            self._ffn = resolve("expert_ffn", backend).fn
        else:
            raise ValueError(f"unknown EP mode '{mode}'")

    def construct(self, x, weights, ids, w1, w2, w3, shared_out=None):
        if self.mode == "allgather":
            xg = self.gather(x)
            wg = self.gather(weights)
            ig = self.gather_ids(ids) - self.offset                      # other ranks' experts -> outside [0, local)
            if self.capacity_factor is None:
                partial, dropped = self.experts(xg, wg, ig, w1, w2, w3)
            else:       # C from all gathered tokens and all E experts: what one process with the whole batch uses
                C = default_capacity(xg.shape[0], ig.shape[1], self.num_experts, self.capacity_factor)
                expanded, row, kept, before = self._init_routing(xg, ig, 0, C, self.local, 1, 2)
                out = self._ffn(expanded, w1, w2, w3, self.limit)
                partial = self._finalize(out, wg, row, None, None, None, None, 3)
                dropped = ops.cast(ops.sum(ops.cast(before - kept, ms.float32)), ms.int32)
            y = self.reduce_scatter(partial)
        else:
            E, L, ep = self.num_experts, self.local, self.ep
            C = self.capacity if self.capacity_factor is None else default_capacity(x.shape[0], ids.shape[1], E,
                                                                                      self.capacity_factor)
            expanded, row, kept, before = self._init_routing(x, ids, 0, C, E, 1, 2)      # [E, C, D], own tokens
            D = expanded.shape[-1]
            recv = self.exchange(expanded)                           # [ep_src * L, C, D]: my experts' rows
            local_in = recv.reshape(ep, L, C, D).swapaxes(0, 1).reshape(L, ep * C, D)
            local_out = self._ffn(local_in, w1, w2, w3, self.limit)
            back = self.exchange(local_out.reshape(L, ep, C, D).swapaxes(0, 1).reshape(ep * L, C, D))
            y = self._finalize(back, weights, row, None, None, None, None, 3)
            dropped = ops.cast(ops.sum(ops.cast(before - kept, ms.float32)), ms.int32)
        if shared_out is not None:
            y = y + shared_out
        return y, dropped
