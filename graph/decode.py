"""Compiled serving graphs: one step over T tokens per batch row, reading and writing the per-layer caches in place.

    StepGraph(model, layout, cache, T, ctx_cap, ...)(ids [B,T] i32, pos0 [B] i32, nvalid [B] i32) -> logits (, streams)
    MTPStepGraph(model, layout, cache, T)(h_main [B,T,hc,D], next_ids [B,T] i32, pos0, nvalid) -> draft logits [B, V]
    RestoreShadow(layout, cache)(mask [B] bool)        speculative rejection: compressor state <- shadow

Row b processes ids[b, :nvalid[b]] at absolute positions pos0[b] .. pos0[b]+nvalid[b]-1; the rest of the row is
padding (computed, never written), and nvalid = 0 leaves a row untouched. Positions are TENSORS, so one compile
serves every step of every sequence: the static shape is (B, T) plus the context bucket `ctx_cap` (a step reads
ctx_cap // ratio compressed entries). T = 1 is the decode step, T = 2 the speculative verify step, T = C a
prefill chunk (one-shot prefill = one chunk at pos0 = 0). The graph composes the model's own Cells and op
functions (block._hc_pre/_hc_post, attn._attend, the Gate, the MoE ops, Linear/RMSNorm weights); the cache is
a tuple of Parameters (CacheLayout order) held by the graph — not passed per call, which costs ~0.5 ms per step
on CPU — and updated with ScatterNdUpdate / Assign, so no step copies a cache.

Per layer (spec §9, generalised to tensor positions, any T, per-row lengths):
  window ring   [B, W+1, hd]: slot = position mod W, row W = scratch for inactive rows. Queries attend over
                [ring before this step | this step's kv]; afterwards each slot holds its latest valid position.
  compressor    state [B, coff·r + 1, coff·c]: position a in slot a mod coff·r (overlap: previous + current
                block), kv 0 / score -1e30 at sequence start, nothing ever shifts; last row scratch. Each block
                whose last token falls inside the step is pooled (its tokens found by position in the state or
                the step), RMS-normed, RoPE'd at its first position (gotcha 10) and written to entries[b, block];
                candidates that do not end a block go to the entries' scratch row Nmax, which nothing reads.
  entries       [B, Nmax + 1, c] (main KV c = head_dim; CSA indexer keys c = index_head_dim).
  attention     the op sparse_attention over kv = [ring | step kv | entries] with window / compressed index
                lists (-1 = skipped). CSA: the lightning-indexer score over the visible entries, exact top-k with
                ties to the lower id (the op's rule); short decode contexts pass the picked set as a masked list
                over all entries, long ones gather just the k picked rows. HCA: every visible entry.
INT8 KV (kv_int8): the head_dim - rope_head_dim non-RoPE dims of every KV row (ring and entries) are stored int8
with one float32 scale per row (amax / 127), RoPE dims float32; the step's own kv and new entries are
fake-quantised the same way before use, so chunked == one-shot == decode also holds in INT8 mode.
Shadow (T = 2 verify, shadow=True): the compressor state as of each row's second-to-last valid token is also
written to shadow buffers; rejecting the draft is RestoreShadow(rows). The ring slot and entry row the draft wrote
are never read before the corrected token overwrites them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from ascend_v4.config import ModelConfig
from ascend_v4.ops.attention.composite import fp4_rotate
from ascend_v4.ops.common import NEG_INF, rms_norm

INT8_MAX = 127.0


# ------------------------------------------------------------------------------------------- cache layout
@dataclass(frozen=True)
class CacheEntry:
    name: str
    shape: Tuple[int, ...]
    dtype: str            # numpy dtype name
    fill: float           # value at sequence start
    kind: str             # SWA / CSA / HCA / MTP
    role: str             # ring / entries / index_keys / state / shadow
    per_row_tokens: int   # how many token positions a row of this buffer covers (bytes-per-token accounting)

    @property
    def param_shape(self) -> Tuple[int, int]:
        """Stored 2-D as [B·R, width]: ScatterUpdate writes rows in place in O(rows written), while MindSpore's
        CPU ScatterNdUpdate on a [B, R, width] buffer copies the whole buffer per call (2.7 ms at 32 MB)."""
        return (self.shape[0] * self.shape[1], self.shape[2])


class CacheLayout:
    """Names, shapes and dtypes of every cache buffer, and where each layer finds its buffers in the flat tuple.

    Per main layer i (ratio r = compress_ratios[i]; W = window, hd = head_dim, c_I = index_head_dim,
    Nmax = max_len // r, coff = 2 if r == 4 else 1):
      L{i}.win                       [B, W+1, hd]          window ring, slot = pos mod W; row W is scratch
                                                           (int8: .win_q [..,hd-rope] i8, .win_r [..,rope], .win_s [..,1])
      L{i}.ent            (r > 0)    [B, Nmax+1, hd]       (int8 split likewise; row Nmax is scratch)
      L{i}.ckv / L{i}.csc (r > 0)    [B, coff·r+1, coff·hd] compressor state (kv 0 / score -1e30), position a in
                                                           slot a mod coff·r; last row scratch
      L{i}.ikey           (r == 4)   [B, Nmax+1, c_I]      indexer keys
      L{i}.ikv / L{i}.isc (r == 4)   [B, 2r+1, 2c_I]       indexer compressor state
      *_sh                (spec)     shadow copies of the four state buffers
    MTP block j: M{j}.win (SWA ring of the draft block).
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, kv_int8: bool = False, mtp: bool = False,
                 shadow: bool = False):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.cfg, self.batch, self.max_len = cfg, batch, max_len
        self.kv_int8, self.mtp, self.shadow = kv_int8, bool(mtp and cfg.n_mtp_layers > 0), shadow
        self.entries: List[CacheEntry] = []
        self.index: Dict[str, int] = {}
        B, W, hd, rd = batch, cfg.window_size, cfg.head_dim, cfg.rope_head_dim
        for i in range(cfg.n_layers):
            r = cfg.ratio(i)
            kind = cfg.layer_kind(i)
            self._kv(f"L{i}.win", (B, W + 1), kind, "ring", 0)
            if r:
                nmax = max_len // r
                coff = 2 if r == 4 else 1
                self._kv(f"L{i}.ent", (B, nmax + 1), kind, "entries", r)
                self._add(f"L{i}.ckv", (B, coff * r + 1, coff * hd), "float32", 0.0, kind, "state", 0)
                self._add(f"L{i}.csc", (B, coff * r + 1, coff * hd), "float32", NEG_INF, kind, "state", 0)
                if shadow:
                    self._add(f"L{i}.ckv_sh", (B, coff * r + 1, coff * hd), "float32", 0.0, kind, "shadow", 0)
                    self._add(f"L{i}.csc_sh", (B, coff * r + 1, coff * hd), "float32", NEG_INF, kind, "shadow", 0)
                if r == 4:
                    ci = cfg.index_head_dim
                    self._add(f"L{i}.ikey", (B, nmax + 1, ci), "float32", 0.0, kind, "index_keys", r)
                    self._add(f"L{i}.ikv", (B, 2 * r + 1, 2 * ci), "float32", 0.0, kind, "state", 0)
                    self._add(f"L{i}.isc", (B, 2 * r + 1, 2 * ci), "float32", NEG_INF, kind, "state", 0)
                    if shadow:
                        self._add(f"L{i}.ikv_sh", (B, 2 * r + 1, 2 * ci), "float32", 0.0, kind, "shadow", 0)
                        self._add(f"L{i}.isc_sh", (B, 2 * r + 1, 2 * ci), "float32", NEG_INF, kind, "shadow", 0)
        if self.mtp:
            for j in range(cfg.n_mtp_layers):
                self._kv(f"M{j}.win", (B, W + 1), "MTP", "ring", 0)
        del hd, rd

    def _add(self, name, shape, dtype, fill, kind, role, ratio):
        self.index[name] = len(self.entries)
        self.entries.append(CacheEntry(name, tuple(int(s) for s in shape), dtype, float(fill), kind, role, ratio))

    def _kv(self, name, lead, kind, role, ratio):
        hd, rd = self.cfg.head_dim, self.cfg.rope_head_dim
        if self.kv_int8:
            self._add(name + "_q", lead + (hd - rd,), "int8", 0.0, kind, role, ratio)
            self._add(name + "_r", lead + (rd,), "float32", 0.0, kind, role, ratio)
            self._add(name + "_s", lead + (1,), "float32", 0.0, kind, role, ratio)
        else:
            self._add(name, lead + (hd,), "float32", 0.0, kind, role, ratio)

    def kv_ids(self, name: str) -> Tuple[int, ...]:
        """Flat indices of a KV buffer: (i,) float32, or (q, rope, scale) in INT8 mode; () if absent."""
        if self.kv_int8:
            if name + "_q" not in self.index:
                return ()
            return (self.index[name + "_q"], self.index[name + "_r"], self.index[name + "_s"])
        return (self.index[name],) if name in self.index else ()

    def ids(self, name: str) -> int:
        return self.index.get(name, -1)

    def state_names(self) -> List[str]:
        return [e.name for e in self.entries if e.role == "state"]


# ----------------------------------------------------------------------------------------- graph helpers
def _rows(x, idx):
    """x [B, N, ...], idx [B, K] int32 in [0, N) -> x[b, idx[b, k]] as [B, K, ...]."""
    B, N = x.shape[0], x.shape[1]
    K = idx.shape[1]
    tail = x.shape[2:]
    flat = (idx + ops.arange(B, dtype=ms.int32).reshape(B, 1) * N).reshape(-1)
    return ops.gather(x.reshape((B * N,) + tail), flat, 0).reshape((B, K) + tail)


def _table(tab, P, max_pos):
    """RoPE table rows at positions P (any int32 shape) -> P.shape + [tab width]."""
    flat = ops.clip(P.reshape(-1), 0, max_pos - 1)
    return ops.gather(tab, flat, 0).reshape(P.shape + (tab.shape[-1],))


def rope_tables2(cos, sin):
    """cos/sin [n, rd/2] -> (cos2, signed sin2) [n, rd]: cos2[2i] = cos2[2i+1] = cos_i; sin2 = (-sin_i, +sin_i)."""
    c2 = np.repeat(np.asarray(cos, np.float32), 2, -1)
    s2 = np.repeat(np.asarray(sin, np.float32), 2, -1)
    s2[..., 0::2] *= -1.0
    return c2, s2


def rope_full(c2, s2, width):
    """Full-width multipliers for rope(): ones / zeros on the width - rd non-RoPE dims."""
    lead = c2.shape[:-1] + (width - c2.shape[-1],)
    return (ops.concat([ops.ones(lead, ms.float32), c2], -1), ops.concat([ops.zeros(lead, ms.float32), s2], -1))


def pair_perm(width):
    """int32 [width]: index of each dim's pair partner (2i <-> 2i+1)."""
    return ms.Tensor(np.arange(width).reshape(-1, 2)[:, ::-1].reshape(-1).astype(np.int32))


def rope_part(x, c2, s2, perm_rd, inverse=False):
    """The same rotation applied to the RoPE slice only (c2/s2 [..., rd]) and concatenated back: fewer bytes touched
    than rope() on large tensors (prefill chunks), two more kernels."""
    rd = c2.shape[-1]
    d = x.shape[-1]
    r = x[..., d - rd:]
    sw = ops.gather(r, perm_rd, r.ndim - 1)
    rot = r * c2 - sw * s2 if inverse else r * c2 + sw * s2
    return ops.concat([x[..., :d - rd], rot], -1)


def rope(x, C, S, perm, inverse=False):
    """Interleaved-pair RoPE of the last rd dims in 4 kernels: x·C + pairswap(x)·S with full-width C = [1 | cos2],
    S = [0 | ±sin2] (from rope_full); pairswap (a gather with pair_perm) maps each pair (a, b) to (b, a). The
    RoPE dims get exactly a·cos − b·sin and a·sin + b·cos (composite.apply_rope's numbers), the other dims stay
    x (x·1 + y·0). A decode step is made of many tiny kernels, so the kernel count is what this saves."""
    sw = ops.gather(x, perm, x.ndim - 1)
    if inverse:
        return x * C - sw * S
    return x * C + sw * S


def kv_quant(x, nope):
    """[..., hd] float32 -> (int8 [..., nope], rope float32 [..., hd-nope], scale float32 [..., 1])."""
    head = x[..., :nope]
    amax = ops.amax(ops.abs(head), -1, True)
    scale = ops.maximum(amax, ops.full_like(amax, 1e-12)) / INT8_MAX
    q = ops.clamp(ops.round(head / scale), -INT8_MAX, INT8_MAX)
    return ops.cast(q, ms.int8), x[..., nope:], scale


def kv_dequant(q, rope, scale):
    return ops.concat([ops.cast(q, ms.float32) * scale, rope], -1)


def kv_fake_quant(x, nope):
    q, r, s = kv_quant(x, nope)
    return kv_dequant(q, r, s)


def select_mask(score, vis, k):
    """The lightning indexer's exact selection with tensor visibility: score [B,T,N], vis [B,T] (entries < vis
    are visible) -> bool [B,T,N], True on the top-k visible entries (ties to the lower id, like the op)."""
    N = score.shape[-1]
    ent = ops.arange(N, dtype=ms.int32).reshape(1, 1, N)
    visible = ent < ops.expand_dims(vis, -1)
    score = ops.where(visible, score, ops.full_like(score, NEG_INF))
    kth = ops.topk(score, k)[0][..., k - 1:k]
    above = score > kth
    tied = score == kth
    room = k - ops.sum(ops.cast(above, ms.int32), -1, True)
    take = ops.logical_or(above, ops.logical_and(tied, ops.cumsum(ops.cast(tied, ms.int32), -1) <= room))
    return ops.logical_and(take, visible)


def mask_to_ids(take, k):
    """bool [B,T,N] with <= k True -> [B,T,k] their ids (ascending), -1 padded."""
    N = take.shape[-1]
    ent = ops.arange(N, dtype=ms.int32).reshape(1, 1, N)
    key = ops.cast(ops.where(take, ent, ent + N), ms.float32)
    _, idx = ops.topk(-key, k)
    idx = ops.cast(idx, ms.int32)
    return ops.where(ops.gather_elements(take, -1, idx), idx, -ops.ones_like(idx))


def select_topk(score, vis, k):
    """[B,T,k] ids of the top-k visible entries (ties to the lower id), -1 padded, ascending."""
    return mask_to_ids(select_mask(score, vis, k), k)


# ------------------------------------------------------------------------------------------ step graph
class _StepBase(nn.Cell):
    """Shared per-layer step math; subclasses assemble the main model or the MTP draft block."""

    def __init__(self, model, layout: CacheLayout, cache, T: int, ctx_cap: int, experts=None):
        super().__init__()
        cfg = model.cfg
        self.model = model
        if len(cache) != len(layout.entries):
            raise ValueError(f"cache has {len(cache)} buffers, the layout {len(layout.entries)}")
        self.cache = ms.ParameterTuple(cache)
        # routed experts pre-stacked per block ([E, I, D], [E, D, I], [E, I, D]; see stack_experts), or None to let
        # each MoE Cell stack its expert weights on every call
        self.stacked = experts is not None
        if self.stacked:
            self.experts = experts
            from ascend_v4 import ops as v4ops
            # dropless token-sorted routing: only the T·k routed rows go through the experts (the MoE Cell's
            # dispatch computes every expert over a capacity-T buffer: E/k times the work in a prefill chunk)
            self._init_routing = v4ops.resolve("moe_init_routing").fn
            self._grouped_ffn = v4ops.resolve("grouped_expert_ffn").fn
            self._finalize = v4ops.resolve("moe_finalize_routing").fn
        self.T = int(T)
        self.B = layout.batch
        self.W = cfg.window_size
        self.hd, self.rd = cfg.head_dim, cfg.rope_head_dim
        self.nope = cfg.head_dim - cfg.rope_head_dim
        self.hc = cfg.hc_mult
        self.int8 = layout.kv_int8
        self.max_pos = model.max_seq_len
        self.max_len = layout.max_len
        self.ctx_cap = int(min(ctx_cap, layout.max_len))
        self.eps = cfg.norm_eps
        self.topk = cfg.index_topk
        self.use_shadow = False
        # doubled RoPE tables, one pair per table kind (0: plain for SWA/MTP, 1: YaRN for compressed layers)
        plain, yarn = (None, None), (None, None)
        for i in range(cfg.n_total_blocks):
            t = rope_tables2(model.rope_cos[i].asnumpy(), model.rope_sin[i].asnumpy())
            if cfg.ratio(i):
                yarn = t
            else:
                plain = t
        self.c2 = tuple(ms.Tensor(t[0]) if t[0] is not None else ms.Tensor(np.zeros((1, self.rd), np.float32))
                        for t in (plain, yarn))
        self.s2 = tuple(ms.Tensor(t[1]) if t[1] is not None else ms.Tensor(np.zeros((1, self.rd), np.float32))
                        for t in (plain, yarn))
        self.tab_kind = tuple(1 if cfg.ratio(i) else 0 for i in range(cfg.n_total_blocks))
        self.di = cfg.index_head_dim
        self.perm_hd, self.perm_di, self.perm_rd = pair_perm(self.hd), pair_perm(self.di), pair_perm(self.rd)
        self.full_rope = self.T <= 2
        self.eye_g = tuple(ms.Tensor(np.eye(g, dtype=np.float32).reshape(1, g, g, 1)) for g in range(5))
        # CSA decode: attend through a mask over all `ncap` entries (no gather) while ncap is at most this
        self.mask_path_max = 512
        self.mm_t = ops.MatMul(transpose_b=True)
        self.scatter_rows = ops.ScatterUpdate()
        self.bmm_t = ops.BatchMatMul(transpose_b=True)
        # compression ratios in use, and each block's index into them (-1: SWA) — per-ratio step constants
        self.ratios = tuple(sorted(set(r for r in cfg.compress_ratios if r)))
        self.r_idx = tuple(self.ratios.index(cfg.ratio(i)) if cfg.ratio(i) else -1 for i in range(cfg.n_total_blocks))
        # per block (main layers 0..n-1, then MTP blocks): flat cache indices, -1 / () when absent
        names = ["L%d" % i for i in range(cfg.n_layers)] + ["M%d" % j for j in range(cfg.n_mtp_layers)]
        self.c_win = tuple(layout.kv_ids(n + ".win") for n in names)
        self.c_ent = tuple(layout.kv_ids(n + ".ent") for n in names)
        self.c_state = tuple(tuple(layout.ids(n + s) for s in (".ckv", ".csc", ".ckv_sh", ".csc_sh"))
                             for n in names)
        self.c_index = tuple(tuple(layout.ids(n + s) for s in (".ikey", ".ikv", ".isc", ".ikv_sh", ".isc_sh"))
                             for n in names)

    # ---- KV buffer access (float32 or int8 split) ----
    # ---- cache buffers: 2-D [B·R, width]; rows addressed as b·R + row ----
    def _flat(self, idx, R):
        """idx [B, K] rows of each sequence -> [B·K] flat rows."""
        return (idx + ops.arange(self.B, dtype=ms.int32).reshape(self.B, 1) * R).reshape(-1)

    def _gather(self, buf, R, idx):
        """buf [B·R, w], idx [B, K] -> [B, K, w]."""
        return ops.gather(buf, self._flat(idx, R), 0).reshape(self.B, idx.shape[1], -1)

    def _prefix(self, buf, R, n):
        """The first n rows of each sequence -> [B, n, w] (a copy of just those rows)."""
        if n == R:
            return buf.reshape(self.B, R, -1)
        return self._gather(buf, R, ops.broadcast_to(ops.arange(n, dtype=ms.int32).reshape(1, n), (self.B, n)))

    def _kv_read(self, cache, ids, R):
        if self.int8:
            return kv_dequant(cache[ids[0]].reshape(self.B, R, -1), cache[ids[1]].reshape(self.B, R, -1),
                              cache[ids[2]].reshape(self.B, R, -1))
        return cache[ids[0]].reshape(self.B, R, -1)

    # (bufs = the tuple returned by a scatter: reading through it orders the read after the write)
    def _kv_read_prefix(self, bufs, R, n):
        if self.int8:
            return kv_dequant(self._prefix(bufs[0], R, n), self._prefix(bufs[1], R, n), self._prefix(bufs[2], R, n))
        return self._prefix(bufs[0], R, n)

    def _kv_rows(self, bufs, R, idx):
        if self.int8:
            return kv_dequant(self._gather(bufs[0], R, idx), self._gather(bufs[1], R, idx),
                              self._gather(bufs[2], R, idx))
        return self._gather(bufs[0], R, idx)

    def _kv_assign(self, cache, ids, value):
        """value [B, R, hd] -> the whole buffer."""
        rows = value.shape[0] * value.shape[1]
        if self.int8:
            q, r, s = kv_quant(value, self.nope)
            ops.assign(cache[ids[0]], q.reshape(rows, -1))
            ops.assign(cache[ids[1]], r.reshape(rows, -1))
            ops.assign(cache[ids[2]], s.reshape(rows, -1))
        else:
            ops.assign(cache[ids[0]], value.reshape(rows, -1))

    def _kv_scatter(self, cache, ids, flat, value):
        """flat [K] buffer rows, value [K, hd] -> the updated buffers (in place, O(K))."""
        if self.int8:
            q, r, s = kv_quant(value, self.nope)
            return (self.scatter_rows(cache[ids[0]], flat, q), self.scatter_rows(cache[ids[1]], flat, r),
                    self.scatter_rows(cache[ids[2]], flat, s))
        return (self.scatter_rows(cache[ids[0]], flat, value),)

    def _fq(self, x):
        return kv_fake_quant(x, self.nope) if self.int8 else x

    def _lin(self, x, w):
        """x [..., in] · wᵀ as one MatMul(transpose_b) — no per-step Transpose copy of the weight."""
        shape = x.shape
        y = self.mm_t(x.reshape(-1, shape[-1]), ops.cast(w, x.dtype))
        return y.reshape(shape[:-1] + (w.shape[0],))

    def _norm(self, cell, x):
        return rms_norm(x, ops.cast(cell.weight, ms.float32), cell.eps)

    # ---- per-step constants shared by every layer ----
    def _step_ctx(self, pos0, nvalid):
        """Per-step constants shared by every layer, computed once: positions P [B,T], each row's last valid
        position, full-width RoPE multipliers per table kind and width, window index lists, the ring update plan,
        and per compression ratio the visible-entry counts and (decode) the compressor write plan."""
        B, T, W = self.B, self.T, self.W
        P = pos0.reshape(-1, 1) + ops.arange(T, dtype=ms.int32).reshape(1, T)
        last = pos0 + nvalid - 1
        c0, s0 = _table(self.c2[0], P, self.max_pos), _table(self.s2[0], P, self.max_pos)
        c1, s1 = _table(self.c2[1], P, self.max_pos), _table(self.s2[1], P, self.max_pos)
        if self.full_rope:      # decode: full-width multipliers (4 kernels per rotation)
            tabs = (rope_full(c0, s0, self.hd) + rope_full(c0, s0, self.di),
                    rope_full(c1, s1, self.hd) + rope_full(c1, s1, self.di))
        else:                   # prefill chunks: RoPE-slice multipliers (fewer bytes per rotation)
            tabs = ((c0, s0, c0, s0), (c1, s1, c1, s1))
        tabs = tuple(t + tuple(ops.expand_dims(u, 2) for u in t) for t in tabs)   # + head-broadcast versions
        # window: indices into [ring (W slots + scratch) | step kv (T rows)] per query; -1 before position 0
        a = ops.expand_dims(P, -1) - (W - 1) + ops.arange(W, dtype=ms.int32).reshape(1, 1, W)
        local = a - pos0.reshape(-1, 1, 1)
        win = ops.where(a >= 0, ops.where(local >= 0, W + 1 + local, a % W), -ops.ones_like(a))
        # ring update: each slot keeps its latest valid position <= last
        s = ops.arange(W, dtype=ms.int32).reshape(1, W)
        active = (last >= pos0).reshape(-1, 1)
        if T == 1:              # one row per sequence: slot pos0 mod W, or the scratch row W when inactive
            slot = ops.where(active, (pos0 % W).reshape(-1, 1), ops.full_like(active, W, dtype=ms.int32))
            ring = (self._flat(slot, W + 1), s)
        else:
            L = last.reshape(-1, 1)
            al = L - ((L - s) % W)
            ring = (ops.expand_dims(al >= pos0.reshape(-1, 1), -1), ops.clip(al - pos0.reshape(-1, 1), 0, T - 1))
        per_ratio = ()
        for r in self.ratios:
            vis = (P + 1) // r
            plan = ()
            if T == 1 and not self.use_shadow:
                p1 = (pos0 + 1).reshape(-1, 1)
                emit = ops.logical_and(p1 % r == 0, active)                                     # [B, 1]
                row = ops.where(emit, pos0.reshape(-1, 1) // r, ops.full_like(p1, self.max_len // r))
                bcol = ops.arange(B, dtype=ms.int32).reshape(B, 1)
                index = self._flat(row, self.max_len // r + 1)                                   # [B]
                ce, se = _table(self.c2[1], p1 - r, self.max_pos), _table(self.s2[1], p1 - r, self.max_pos)
                rt = rope_full(ce.reshape(B, -1), se.reshape(B, -1), self.hd) + \
                    rope_full(ce.reshape(B, -1), se.reshape(B, -1), self.di)
                blk0 = (pos0 // r * r).reshape(-1, 1) + ops.arange(r, dtype=ms.int32).reshape(1, r)   # block tokens
                plans = ()
                for n_s in (2 * r, r):                 # overlap layout (2r slots) / plain (r slots)
                    slot = ops.where(active, (pos0 % n_s).reshape(-1, 1), ops.full_like(p1, n_s))
                    flat = bcol * (n_s + 1)
                    plans = plans + (((flat + slot).reshape(-1), (flat + blk0 % n_s).reshape(-1),
                                      (flat + (blk0 - r) % n_s).reshape(-1), index, rt),)
                plan = plans
            per_ratio = per_ratio + ((vis, plan),)
        return P, last, tabs, win, ring, per_ratio

    def _ring_update(self, cache, ids, ring, kv, plan, after):
        """Write the step's kv into the ring (plan from _step_ctx). The write waits for `after` (the attention
        output), so no read of the old ring can see the new one."""
        if self.T == 1:         # in place: one row per sequence
            self._kv_scatter(cache, ids, plan[0], ops.depend(kv.reshape(self.B, -1), after))
        else:
            W = self.W
            new = ops.where(plan[0], _rows(kv, plan[1]), ring[:, :W])
            self._kv_assign(cache, ids, ops.depend(ops.concat([new, ring[:, W:]], 1), after))

    # ---- compressor (decode-state form, tensor positions) ----
    def _write_entries(self, cache, i_ent, ent_is_kv, blk, emit, ent, r):
        """entries[b, blk] = ent where emit, else the scratch row Nmax. blk/emit [B, M], ent [B, M, c]."""
        B, M, c = ent.shape
        nmax = self.max_len // r
        row = ops.where(emit, blk, ops.full_like(blk, nmax))
        return self._scatter(cache, i_ent, ent_is_kv, self._flat(row, nmax + 1), ent.reshape(B * M, c))

    def _scatter(self, cache, i_ent, ent_is_kv, flat, value):
        if ent_is_kv:
            return self._kv_scatter(cache, i_ent, flat, value)
        return (self.scatter_rows(cache[i_ent], flat, value),)

    def _pool(self, comp, pool_kv, pool_sc, axis, kind, pos_e):
        """Softmax pooling over the slot axis, RMSNorm, RoPE at the block's first position pos_e."""
        ent = rms_norm(ops.sum(pool_kv * ops.softmax(pool_sc, axis), axis), ops.cast(comp.norm.weight, ms.float32),
                       self.eps)
        C, S = rope_full(_table(self.c2[kind], pos_e, self.max_pos), _table(self.s2[kind], pos_e, self.max_pos),
                         ent.shape[-1])
        return rope(ent, C, S, self.perm_hd if ent.shape[-1] == self.hd else self.perm_di)

    def _compress(self, comp, xn, cache, st, i_ent, ent_is_kv, kind, P, pos0, last, plan):
        """Run one compressor over the step's tokens: write the entries of every block completed inside the valid
        tokens (RoPE'd at the block's first position) and the new state, in place. st = flat indices of
        (kv state, score state, kv shadow, score shadow). Returns the updated entry buffers: later reads go through
        them, which orders them after the write (an in-place write does not order reads of the raw Parameter).

        State layout: position a lives in slot a mod n_s (n_s = 2r with overlap — the previous and the current
        block —, r without), so a token is one in-place row write and nothing ever shifts; row n_s is scratch."""
        r, T, B = comp.ratio, self.T, self.B
        overlap = comp.overlap
        coff = 2 if overlap else 1
        n_s = coff * r
        c = comp.norm.weight.shape[0]
        xf = ops.cast(xn, ms.float32)
        kvp = self._lin(xf, ops.cast(comp.wkv.weight, ms.float32))
        scp = self._lin(xf, ops.cast(comp.wgate.weight, ms.float32)) + ops.gather(
            ops.cast(comp.ape, ms.float32), (P % r).reshape(-1), 0).reshape(B, T, coff * c)
        if T == 1 and not self.use_shadow:
            return self._compress1(comp, cache, st, i_ent, ent_is_kv, kvp, scp, plan)
        kv_state = cache[st[0]].reshape(B, n_s + 1, -1)
        sc_state = cache[st[1]].reshape(B, n_s + 1, -1)
        E_kv = ops.concat([kv_state, kvp], 1)                     # [B, n_s + 1 + T, coff·c]
        E_sc = ops.concat([sc_state, scp], 1)
        n_e = n_s + 1 + T
        p0 = pos0.reshape(-1, 1)

        def row_of(a):
            """a [B, K] absolute positions -> rows of E: this step's rows for a >= pos0, else the state slot (which
            still holds a: every position read is among the n_s before pos0; a < 0 finds a never-written slot)."""
            return ops.clip(ops.where(a >= p0, n_s + 1 + (a - p0), a % n_s), 0, n_e - 1)

        # --- blocks ending inside this step ---
        M = (T + r - 1) // r
        blk = p0 // r + ops.arange(M, dtype=ms.int32).reshape(1, M)                            # [B, M]
        emit = blk * r + (r - 1) <= last.reshape(-1, 1)
        u = ops.arange(r, dtype=ms.int32).reshape(1, 1, r)
        a_cur = (ops.expand_dims(blk, -1) * r + u).reshape(B, M * r)
        cur_kv = _rows(E_kv, row_of(a_cur)).reshape(B, M, r, coff * c)
        cur_sc = _rows(E_sc, row_of(a_cur)).reshape(B, M, r, coff * c)
        if overlap:
            a_prev = a_cur - r
            prev_kv = _rows(E_kv, row_of(a_prev)).reshape(B, M, r, coff * c)
            prev_sc = _rows(E_sc, row_of(a_prev)).reshape(B, M, r, coff * c)
            pool_kv = ops.concat([prev_kv[..., :c], cur_kv[..., c:]], 2)
            pool_sc = ops.concat([prev_sc[..., :c], cur_sc[..., c:]], 2)
        else:
            pool_kv, pool_sc = cur_kv, cur_sc
        ent = self._pool(comp, pool_kv, pool_sc, 2, kind, blk * r)                           # [B, M, c]
        bufs = self._write_entries(cache, i_ent, ent_is_kv, blk, emit, ent, r)

        # --- the new state: slot s keeps the latest position <= last congruent to s ---
        rows = B * (n_s + 1)
        new_kv = self._state_after(kv_state, kvp, last, p0, n_s).reshape(rows, -1)
        new_sc = self._state_after(sc_state, scp, last, p0, n_s).reshape(rows, -1)
        if self.use_shadow:
            ops.assign(cache[st[2]], self._state_after(kv_state, kvp, last - 1, p0, n_s).reshape(rows, -1))
            ops.assign(cache[st[3]], self._state_after(sc_state, scp, last - 1, p0, n_s).reshape(rows, -1))
        ops.assign(cache[st[0]], new_kv)
        ops.assign(cache[st[1]], new_sc)
        return bufs

    def _state_after(self, state, new, last, p0, n_s):
        """state [B, n_s + 1, w], new [B, T, w] -> the state holding, per slot, the latest position <= last."""
        L = last.reshape(-1, 1)
        s = ops.arange(n_s, dtype=ms.int32).reshape(1, n_s)
        a = L - ((L - s) % n_s)
        use = ops.expand_dims(a >= p0, -1)
        j = ops.clip(a - p0, 0, self.T - 1)
        return ops.concat([ops.where(use, _rows(new, j), state[:, :n_s]), state[:, n_s:]], 1)

    def _compress1(self, comp, cache, st, i_ent, ent_is_kv, kvp, scp, plan):
        """T == 1 (decode): write the token into slot p mod n_s in place; pool the block that p would end (the
        entry goes to the scratch row unless it does: pooling every step measured cheaper than graph control flow
        on "any row emits"). Same state and entries as the general path. plan from _step_ctx."""
        r, B = comp.ratio, self.B
        overlap = comp.overlap
        c = comp.norm.weight.shape[0]
        slot_idx, cur_rows, prev_rows, index, tabs = plan[0] if overlap else plan[1]
        C, S = (tabs[0], tabs[1]) if c == self.hd else (tabs[2], tabs[3])
        fkv = self.scatter_rows(cache[st[0]], slot_idx, kvp.reshape(B, -1))       # [B·(n_s+1), coff·c]
        fsc = self.scatter_rows(cache[st[1]], slot_idx, scp.reshape(B, -1))
        if overlap:
            pool_kv = ops.concat([ops.gather(fkv, prev_rows, 0).reshape(B, r, -1)[..., :c],
                                  ops.gather(fkv, cur_rows, 0).reshape(B, r, -1)[..., c:]], 1)
            pool_sc = ops.concat([ops.gather(fsc, prev_rows, 0).reshape(B, r, -1)[..., :c],
                                  ops.gather(fsc, cur_rows, 0).reshape(B, r, -1)[..., c:]], 1)
        else:
            pool_kv = ops.gather(fkv, cur_rows, 0).reshape(B, r, c)
            pool_sc = ops.gather(fsc, cur_rows, 0).reshape(B, r, c)
        ent = rms_norm(ops.sum(pool_kv * ops.softmax(pool_sc, 1), 1), ops.cast(comp.norm.weight, ms.float32),
                       self.eps)                                                              # [B, c]
        return self._scatter(cache, i_ent, ent_is_kv, index,
                             rope(ent, C, S, self.perm_hd if c == self.hd else self.perm_di))

    # ---- one attention sublayer ----
    def _rope(self, x, C, S, perm, inverse=False):
        if self.full_rope:
            return rope(x, C, S, perm, inverse)
        return rope_part(x, C, S, self.perm_rd, inverse)

    def _attention(self, attn, li, x, cache, ctx):
        B, T, W = self.B, self.T, self.W
        P, last, tabs, win_idx, ring_plan, per_ratio = ctx
        pos0 = P[:, 0]
        kind = self.tab_kind[li]
        C, S, Ci, Si, C4, S4, Ci4, Si4 = tabs[kind]        # [B, T, hd|di], and [B, T, 1, hd|di] for heads
        qr = self._norm(attn.q_norm, self._lin(x, attn.wq_a.weight))
        q = self._lin(qr, attn.wq_b.weight).reshape(B, T, attn.n_heads, attn.head_dim)
        q = q * ops.rsqrt(ops.mean(q * q, -1, True) + attn.eps)
        q = self._rope(q, C4, S4, self.perm_hd)
        kv = self._fq(self._rope(self._norm(attn.kv_norm, self._lin(x, attn.wkv.weight)), C, S, self.perm_hd))
        win_ids = self.c_win[li]
        ring = self._kv_read(cache, win_ids, W + 1)
        ratio = attn.ratio
        cmp_idx = None
        kv_all = ops.concat([ring, kv], 1)
        if ratio:
            vis, plan = per_ratio[self.r_idx[li]]                                 # vis [B, T] visible entries
            ent_ids = self.c_ent[li]
            ent = self._compress(attn.compressor, x, cache, self.c_state[li], ent_ids, True, kind, P, pos0, last,
                                 plan)
            nmax = self.max_len // ratio
            kcap = min(self.ctx_cap, self.max_len) // ratio       # entries the context bucket can hold
            # rows read: the whole buffer when the bucket covers it (the scratch row is never visible): no copy
            ncap = nmax + 1 if kcap == nmax else kcap
            if kcap > 0:
                base = W + 1 + T
                if attn.has_indexer:
                    idx = attn.indexer
                    ci = self.c_index[li]
                    keys = self._compress(idx.compressor, x, cache, ci[1:], ci[0], False, kind, P, pos0, last,
                                          plan)[0]
                    qi = self._lin(qr, idx.wq_b.weight).reshape(B, T, idx.n_heads, idx.head_dim)
                    qi = self._rope(qi, Ci4, Si4, self.perm_di)
                    wi = self._lin(x, idx.weights_proj.weight) * idx.weight_scale
                    keys = self._prefix(keys, nmax + 1, ncap)
                    if idx.fp4:   # DeepSeek's indexer numerics: Hadamard + FP4 q/k (docs/numerics.md)
                        qi, keys = fp4_rotate(qi), fp4_rotate(keys)
                    # [B, T·H, d] x [B, d, ncap]: one batched matmul over rows
                    s = ops.relu(self.bmm_t(ops.cast(qi, ms.float32).reshape(B, T * idx.n_heads, idx.head_dim),
                                            keys)).reshape(B, T, idx.n_heads, ncap)
                    score = ops.sum(s * ops.expand_dims(ops.cast(wi, ms.float32), -1), 2)      # [B, T, ncap]
                    k = min(self.topk, kcap)
                    take = select_mask(ops.stop_gradient(score), vis, k)                       # [B, T, ncap]
                    if T <= 2 and ncap <= self.mask_path_max:
                        # short-context decode: the picked set as a -1-masked list over all entries (no gather)
                        kv_all = ops.concat([kv_all, self._kv_read_prefix(ent, nmax + 1, ncap)], 1)
                        e = ops.arange(ncap, dtype=ms.int32).reshape(1, 1, ncap)
                        cmp_idx = ops.where(take, e + base, -ops.ones((B, T, ncap), ms.int32))
                    elif T * k <= ncap:
                        # long-context decode: gather only the picked rows
                        sel = mask_to_ids(take, k)
                        picked = self._kv_rows(ent, nmax + 1, ops.clip(sel, 0, ncap - 1).reshape(B, T * k))
                        kv_all = ops.concat([kv_all, picked], 1)
                        slot = base + ops.arange(T * k, dtype=ms.int32).reshape(1, T, k)
                        cmp_idx = ops.where(sel >= 0, ops.broadcast_to(slot, (B, T, k)), -ops.ones_like(sel))
                    else:
                        kv_all = ops.concat([kv_all, self._kv_read_prefix(ent, nmax + 1, ncap)], 1)
                        sel = mask_to_ids(take, k)
                        cmp_idx = ops.where(sel >= 0, sel + base, -ops.ones_like(sel))
                else:
                    kv_all = ops.concat([kv_all, self._kv_read_prefix(ent, nmax + 1, ncap)], 1)
                    e = ops.arange(ncap, dtype=ms.int32).reshape(1, 1, ncap)
                    cmp_idx = ops.where(e < ops.expand_dims(vis, -1), e + base,
                                        -ops.ones((B, T, ncap), ms.int32))
        o = attn._attend(q, kv_all, attn.attn_sink, win_idx, cmp_idx, attn.scale)
        self._ring_update(cache, win_ids, ring, kv, ring_plan, o)
        o = self._rope(o, C4, S4, self.perm_hd, True)
        G, R = attn.n_groups, attn.o_lora_rank
        if T <= 2 and G <= 4:
            # decode: one MatMul against the unreshaped [G·R, in] weight, keep each group's own block (G x the
            # MACs of a few rows, but no per-step copy of the reshaped weight, which a MindSpore CPU reshape of a
            # Parameter makes)
            full = self._lin(o.reshape(B * T * G, -1), attn.wo_a.weight).reshape(B * T, G, G, R)
            o = ops.sum(full * self.eye_g[G], 2).reshape(B, T, G * R)
        else:
            o = o.reshape(B * T, G, -1).swapaxes(0, 1)                               # [G, B·T, heads/G·hd]
            wo_a = ops.cast(attn.wo_a.weight, o.dtype).reshape(G, R, -1)
            o = self.bmm_t(o, wo_a).swapaxes(0, 1).reshape(B, T, -1)
        return self._lin(o, attn.wo_b.weight)

    def _moe(self, li, ffn, x, ids):
        """MoE.construct with the pre-stacked experts and dropless sorted routing (the Cell's gate, same expert
        math; init_routing -> grouped_expert_ffn -> finalize_routing, shared expert added in the finalize)."""
        if not self.stacked:
            return ffn(x, ids)
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, eids = ffn.gate(x, ids)
        w1, w2, w3 = self.experts[li]
        rows, row_idx, group_list, _ = self._init_routing(x, eids, 0, 0, ffn.n_experts, 0, 1, True)
        routed = self._grouped_ffn(rows, w1, w2, w3, group_list, ffn.limit, 0)
        if ffn.has_shared:
            sh = ffn.shared_experts
            shared = ffn._ffn(ops.expand_dims(x, 0), ops.expand_dims(sh.w1.weight, 0), ops.expand_dims(sh.w2.weight, 0),
                              ops.expand_dims(sh.w3.weight, 0), ffn.shared_limit)[0]
            y = self._finalize(routed, weights, row_idx, shared)
        else:
            y = self._finalize(routed, weights, row_idx)
        return ops.cast(y, x.dtype).reshape(shape)

    def _logits(self, h, fn, scale, base, norm):
        m = self.model
        y = m.hc_head._hc_head(h, fn, scale, base, m.hc_head.hc_eps, m.hc_head.norm_eps)
        return self._lin(ops.cast(self._norm(norm, y), ms.float32), ops.cast(m.head.weight, ms.float32))

    def _block(self, blk, li, h, ids, cache, ctx):
        x, post, comb = blk._hc_pre(h, blk.hc_attn_fn, blk.hc_attn_scale, blk.hc_attn_base, blk.iters, blk.hc_eps,
                                    blk.norm_eps)
        a = self._attention(blk.attn, li, self._norm(blk.attn_norm, x), cache, ctx)
        h = blk._hc_post(a, h, post, comb)
        x, post, comb = blk._hc_pre(h, blk.hc_ffn_fn, blk.hc_ffn_scale, blk.hc_ffn_base, blk.iters, blk.hc_eps,
                                    blk.norm_eps)
        return blk._hc_post(self._moe(li, blk.ffn, self._norm(blk.ffn_norm, x), ids), h, post, comb)

    def _last(self, h, nvalid):
        if self.T == 1:
            return h
        j = ops.clip(nvalid - 1, 0, self.T - 1).reshape(-1, 1)
        return _rows(h, j)                                                         # [B, 1, ...]


class StepGraph(_StepBase):
    """The main model over T tokens per row. logits: 'last' -> [B, V] at each row's last valid token,
    'all' -> [B, T, V]. return_streams adds the final 4-stream hidden state [B, T, hc, D] (the MTP input)."""

    def __init__(self, model, layout: CacheLayout, cache, T: int, ctx_cap: int, logits: str = "last",
                 return_streams: bool = False, shadow: bool = False, experts=None):
        super().__init__(model, layout, cache, T, ctx_cap, experts)
        if logits not in ("last", "all"):
            raise ValueError(f"logits must be 'last' or 'all', got {logits!r}")
        if shadow and not layout.shadow:
            raise ValueError("shadow=True needs a cache layout built with shadow buffers")
        self.all_logits = logits == "all"
        self.return_streams = return_streams
        self.use_shadow = bool(shadow)
        self.n_layers = model.cfg.n_layers

    def construct(self, ids, pos0, nvalid):
        m = self.model
        cache = self.cache
        ctx = self._step_ctx(pos0, nvalid)
        e = m.embed(ids)
        h = ops.broadcast_to(ops.expand_dims(e, 2), e.shape[:2] + (self.hc, e.shape[-1]))
        i = 0
        for blk in m.layers:
            h = self._block(blk, i, h, ids, cache, ctx)
            i += 1
        hl = h if self.all_logits else self._last(h, nvalid)
        logits = self._logits(hl, m.hc_head_fn, m.hc_head_scale, m.hc_head_base, m.norm)
        if not self.all_logits:
            logits = logits.reshape(self.B, -1)
        if self.return_streams:
            return logits, h
        return logits


class MTPStepGraph(_StepBase):
    """The MTP block as a draft model: position t takes (main streams h_t, token t+1) and predicts token t+2.
    Reads/writes its own SWA ring (M0.win). -> draft logits [B, V] at each row's last valid pair."""

    def __init__(self, model, layout: CacheLayout, cache, T: int, experts=None):
        super().__init__(model, layout, cache, T, layout.max_len, experts)
        if not layout.mtp:
            raise ValueError("the cache layout has no MTP ring; build it with mtp=True")
        self.li = model.cfg.n_layers

    def construct(self, h_main, next_ids, pos0, nvalid):
        m = self.model
        cache = self.cache
        blk = m.mtp[0]
        ctx = self._step_ctx(pos0, nvalid)
        x = ops.expand_dims(self._lin(self._norm(blk.enorm, m.embed(next_ids)), blk.e_proj.weight), 2) + \
            self._lin(self._norm(blk.hnorm, h_main), blk.h_proj.weight)
        x = self._block(blk, self.li, x, next_ids, cache, ctx)
        x = self._last(x, nvalid)
        return self._logits(x, blk.hc_head_fn, blk.hc_head_scale, blk.hc_head_base, blk.norm).reshape(self.B, -1)


class RestoreShadow(nn.Cell):
    """state[b] <- shadow[b] for rows where mask[b] (speculative rejection)."""

    def __init__(self, layout: CacheLayout, cache):
        super().__init__()
        self.cache = ms.ParameterTuple(cache)
        pairs = []
        for e in layout.entries:
            if e.role == "shadow":
                pairs.append((layout.index[e.name[:-3]], layout.index[e.name], e.shape[1]))
        self.pairs = tuple(pairs)

    def construct(self, mask):
        cache = self.cache
        for live, sh, R in self.pairs:
            m = ops.broadcast_to(mask.reshape(-1, 1), (mask.shape[0], R)).reshape(-1, 1)
            ops.assign(cache[live], ops.where(m, cache[sh], cache[live]))
        return mask


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


def ctx_bucket(n: int, max_len: int, minimum: int = 256) -> int:
    """Context capacity a step reads: the next power of two >= n (at least `minimum`), capped at max_len."""
    b = minimum
    while b < n:
        b *= 2
    return min(b, max_len)


def build_step_graph(model, layout: CacheLayout, cache, T: int, ctx_cap: Optional[int] = None, **kw) -> StepGraph:
    g = StepGraph(model, layout, cache, T, layout.max_len if ctx_cap is None else ctx_cap, **kw)
    g.set_train(False)
    return g
