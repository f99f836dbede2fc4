"""The compiled serving graphs: thin Cells around the model's cached step (ascend_v4/model.py).

    StepGraph(model, layout, cache, T, ctx_cap, ...)(ids [B,T] i32, pos0 [B] i32, nvalid [B] i32[, engram rows])
        -> logits (, streams)           (DeepSeek-V4.1: engram rows = per Engram layer [B, T, columns·head_dim])
    MTPStepGraph(model, layout, cache, T)(h_main [B,T,hc,D], next_ids [B,T] i32, pos0, nvalid) -> draft logits [B, V]
    DSparkDraftGraph(model)(y [B] i32, ctx_kv [K,B,W,hd], idx [B,bs,W+bs] i32, pos0 [B] i32)
        -> (draft tokens [B, bs], logits [B, bs, V], confidence)      DeepSeek-V4.1 (StepGraph(dspark=True) adds
                                                                     the main KV [K, B, T, hd] the drafter reads)

Row b processes ids[b, :nvalid[b]] at absolute positions pos0[b] .. pos0[b]+nvalid[b]-1; the rest of the row is
padding (computed, never written), and nvalid = 0 leaves a row untouched. A speculative verify's rejected tail
needs no undo: the cache is addressed by position with `layout.slack` spare ring / state slots, so the engine only
rewinds the row's length (ascend_v4/serve/cache.py; docs/design.md, "speculative rollback"). Positions are TENSORS, so one compile
serves every step of every sequence: the static shape is (B, T) plus the context bucket `ctx_cap` (a step reads
ctx_cap // ratio compressed entries). T = 1 is the decode step, T = 2 / block + 1 the speculative verify step (MTP / DSpark), T = C a
prefill chunk (one-shot prefill = one chunk at pos0 = 0). Every formula is the model's: these Cells only hold the
cache (a tuple of Parameters — held, not passed per call, which costs ~0.5 ms per step on CPU), pick each row's
last valid position and apply the head.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from ..model import table_at, take_rows
from .cache import CacheLayout


class _Step(nn.Cell):
    def __init__(self, model, layout: CacheLayout, cache, T: int, ctx_cap: int, experts):
        super().__init__(auto_prefix=False)      # the model's Parameters keep their release names (Engine.load_dspark)
        if len(cache) != len(layout.entries):
            raise ValueError(f"cache has {len(cache)} buffers, the layout {len(layout.entries)}")
        self.model = model
        self.cache = ms.ParameterTuple(cache)
        self.T, self.B = int(T), layout.batch
        self.max_len = layout.max_len
        self.ctx_cap = int(min(ctx_cap, layout.max_len))
        self.slack = layout.slack
        self.slots = layout.block_slots(model)
        self.shared_slots = layout.shared_slots()
        self.experts = experts

    def _ctx(self, pos0, nvalid):
        return self.model.step_context(pos0, nvalid, self.T, self.max_len, self.slack)

    def _static(self):
        return (self.max_len, self.ctx_cap, self.slack, self.slots, self.experts, self.shared_slots)

    def _last(self, h, nvalid):
        """Each row's last valid position -> [B, 1, ...]."""
        if self.T == 1:
            return h
        return take_rows(h, ops.clip(nvalid - 1, 0, self.T - 1).reshape(-1, 1))


class StepGraph(_Step):
    """The main model over T tokens per row. logits: 'last' -> [B, V] at each row's last valid token,
    'all' -> [B, T, V]. return_streams adds the final 4-stream hidden state [B, T, hc, D] (the MTP input)."""

    def __init__(self, model, layout: CacheLayout, cache, T: int, ctx_cap: int, logits: str = "last",
                 return_streams: bool = False, experts=None, dspark: bool = False):
        if logits not in ("last", "all"):
            raise ValueError(f"logits must be 'last' or 'all', got {logits!r}")
        if dspark and not getattr(model, "with_dspark", False):
            raise ValueError("dspark=True needs a V4.1 model built with_dspark=True")
        super().__init__(model, layout, cache, T, ctx_cap, experts)
        self.all_logits = logits == "all"
        self.return_streams = return_streams
        self.dspark = bool(dspark)

    def construct(self, ids, pos0, nvalid, engram_rows=None):
        if self.model.v41:      # DeepSeek-V4.1: Engram rows from the host; the last block's pre collapses
            out = self.model.step_streams_v41(ids, engram_rows, self.cache, self._ctx(pos0, nvalid),
                                              self._static(), self.dspark)
            h, pre = out[0], out[1]
            if self.all_logits:
                logits = self.model.logits_v41(h, pre)
            else:
                logits = self.model.logits_v41(self._last(h, nvalid), self._last(pre, nvalid)).reshape(self.B, -1)
            res = (logits,)
            if self.return_streams:
                res = res + (h,)
            if self.dspark:     # DSpark's main KV of these positions [stages, B, T, hd]
                res = res + (out[2],)
            return res if len(res) > 1 else logits
        h = self.model.step_streams(ids, self.cache, self._ctx(pos0, nvalid), self._static())
        logits = self.model.logits(h if self.all_logits else self._last(h, nvalid))
        if not self.all_logits:
            logits = logits.reshape(self.B, -1)
        if self.return_streams:
            return logits, h
        return logits


class MTPStepGraph(_Step):
    """The MTP block as a draft model: position t takes (main streams h_t, token t+1) and predicts token t+2.
    Reads/writes its own SWA ring (M0.win). -> draft logits [B, V] at each row's last valid pair."""

    def __init__(self, model, layout: CacheLayout, cache, T: int, experts=None):
        if not layout.mtp:
            raise ValueError("the cache layout has no MTP ring; build it with mtp=True")
        super().__init__(model, layout, cache, T, layout.max_len, experts)

    def construct(self, h_main, next_ids, pos0, nvalid):
        x = self.model.mtp_step_streams(h_main, next_ids, self.cache, self._ctx(pos0, nvalid), self._static())
        return self.model.mtp_head(self._last(x, nvalid)).reshape(self.B, -1)


class DSparkDraftGraph(nn.Cell):
    """DeepSeek-V4.1's DSpark drafter over one block per row (Transformer.dspark_draft): y [B] the token at
    position pos0, ctx_kv [K, B, W, hd] each stage's main-KV window (right-aligned, ending at pos0 - 1), idx
    [B, bs, W + bs] -> (draft tokens [B, bs] for positions pos0+1 .. pos0+bs, logits [B, bs, V], confidence)."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)      # the model's Parameters keep their release names (Engine.load_dspark)
        if not getattr(model, "with_dspark", False):
            raise ValueError("the model was built without DSpark (Transformer(..., with_dspark=True))")
        self.model = model
        self.bs = model.cfg.dspark_block_size

    def construct(self, y, ctx_kv, idx, pos0):
        P = pos0.reshape(-1, 1) + ops.arange(self.bs, dtype=ms.int32).reshape(1, -1)
        (pc, ps) = self.model.rope_dspark
        return self.model.dspark_draft(y, ctx_kv, idx, table_at(pc, P), table_at(ps, P))


def stack_experts(model):
    """Per block (main layers, then MTP blocks): (w1 [E,I,D], w2 [E,D,I], w3 [E,I,D]) Parameters holding a stacked
    copy of the routed experts, shared by every step graph of an engine. The MoE Cell re-stacks its experts on
    each call (a copy of every routed weight per layer per step: ~20% of a small-config decode step); serving
    keeps this copy instead, at the cost of the routed experts' memory once more."""
    out = []
    blocks = list(model.layers) + (list(model.mtp) if model.with_mtp else [])
    for i, blk in enumerate(blocks):
        ws = []
        for name in ("w1", "w2", "w3"):
            a = np.stack([getattr(e, name).weight.asnumpy() for e in blk.ffn.experts])
            ws.append(ms.Parameter(ms.Tensor(a), name=f"serve_experts.{i}.{name}", requires_grad=False))
        out.append(tuple(ws))
    return tuple(out)
