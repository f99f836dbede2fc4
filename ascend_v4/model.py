"""DeepSeek-V4 as MindSpore Cells: one module per concept, parameters named as in the release.

    embed -> 4 identical streams -> n_layers x Block(mHC[attn], mHC[MoE]) -> hc_head -> norm -> head

Every custom computation goes through `ascend_v4.ops` (hc_pre/hc_post/hc_head, moe_route/moe_dispatch/
expert_ffn/moe_combine, compress_kv/lightning_indexer/sparse_attention); each Cell resolves its backends
once at construction, so graph mode compiles whichever backend the registry chose for the device.
On CPU the parameters are float32 (the reference backend); on Ascend pass param_dtype=ms.bfloat16 and the
same Cells run in bf16, with mHC, router, compressor pooling and softmax kept in float32 like the reference.

Incremental decoding runs through the same Cells (docs/design.md, "one code path"). Like the reference's
`forward(x, start_pos)`, every Cell that reads context takes an optional cache: `cache=None` is the full forward
over a whole sequence from position 0 (training, dumps); with a cache (`cache`, `ctx`, `step`: see "cached step"
below) the Cell processes T tokens per batch row at tensor positions pos0 .. pos0+nvalid-1, reading and writing the
per-layer buffers in place — T = 1 is a decode step, T = 2 a speculative verify step, T = C a prefill chunk. Projections, norms, RoPE, the
attention op, the output projection, the MoE and the head are one code for both; only what the context is
made of differs (a whole sequence vs. cache rows + this step's rows).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor
from mindspore.common.initializer import initializer

from . import ops as v4ops
from . import precision
from .config import ModelConfig
from .ops.attention.composite import compressed_indices, fp4_quant, fp4_rotate, window_indices
from .ops.attention.rope import layer_rope_table
from .ops.common import linear, rms_norm
from .ops.mhc.composite import hc_collapse
from .ops.moe.layer import MoeExperts

INT8_MAX = 127.0


def _param(shape, dtype=ms.float32, init="zeros", requires_grad=True):
    return Parameter(initializer(init, tuple(shape), dtype), requires_grad=requires_grad)


class Linear(nn.Cell):
    """y = x·Wᵀ (no bias in V4). Weight [out, in], stored in param_dtype."""

    def __init__(self, in_features: int, out_features: int, dtype=ms.float32):
        super().__init__()
        self.weight = _param((out_features, in_features), dtype)

    def construct(self, x):
        return precision.act(linear(x, ops.cast(self.weight, x.dtype)))


class RMSNorm(nn.Cell):
    def __init__(self, dim: int, eps: float, dtype=ms.float32):
        super().__init__()
        self.eps = eps
        self.weight = _param((dim,), dtype, "ones")

    def construct(self, x):
        return precision.act(rms_norm(x, ops.cast(self.weight, ms.float32), self.eps))


class Embedding(nn.Cell):
    def __init__(self, vocab: int, dim: int, dtype=ms.float32):
        super().__init__()
        self.weight = _param((vocab, dim), dtype)

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


# -------------------------------------------------------------------------------------------------- RoPE
class RopeTables:
    """Per position p, the RoPE multipliers of the interleaved pairs, doubled to the rope width:
    cos2[p] = (c0, c0, c1, c1, ...), sin2[p] = (-s0, +s0, -s1, +s1, ...) [max_seq_len, rope_dim] float32.
    `plain`: base rope_theta without YaRN (SWA layers, MTP); `yarn`: compress_rope_theta with YaRN (compressed
    layers) — the reference's precompute_freqs_cis, one table per kind."""

    def __init__(self, cfg: ModelConfig, max_seq_len: int):
        self.plain = self._doubled(layer_rope_table(cfg, 0, max_seq_len))
        self.yarn = self._doubled(layer_rope_table(cfg, 1, max_seq_len))

    @staticmethod
    def _doubled(cs):
        c2 = np.repeat(np.asarray(cs[0], np.float32), 2, -1)
        s2 = np.repeat(np.asarray(cs[1], np.float32), 2, -1)
        s2[..., 0::2] *= -1.0
        return Tensor(c2), Tensor(s2)

    def for_ratio(self, ratio: int):
        return self.yarn if ratio else self.plain


class Rope(nn.Cell):
    """The reference's apply_rotary_emb on the last rope_dim dims of x [..., dim] through the `rope` op:
    (a, b) -> (a·cos − b·sin, a·sin + b·cos) per pair; inverse rotates by −θ. cos/sin are rope_dim wide or dim wide
    with ones / zeros on the non-RoPE dims (from `full_width`: what a decode step of many tiny kernels wants)."""

    def __init__(self, dim: int, rope_dim: int):
        super().__init__()
        self._rope = v4ops.resolve("rope").fn

    def construct(self, x, cos, sin, inverse=False):
        return self._rope(x, cos, sin, inverse)


def full_width(cos, sin, width):
    """rope_dim-wide multipliers -> width-wide ones for Rope (1 / 0 on the width - rope_dim non-RoPE dims)."""
    lead = cos.shape[:-1] + (width - cos.shape[-1],)
    return (ops.concat([ops.ones(lead, ms.float32), cos], -1), ops.concat([ops.zeros(lead, ms.float32), sin], -1))


def table_at(tab, P):
    """Table rows at positions P (any int32 shape) -> P.shape + [width]."""
    flat = ops.clip(P.reshape(-1), 0, tab.shape[0] - 1)
    return ops.gather(tab, flat, 0).reshape(P.shape + (tab.shape[-1],))


# -------------------------------------------------------------------------------------------- cache rows
# The serving cache (ascend_v4/serve/cache.py, CacheLayout) is a tuple of Parameters, each stored 2-D
# [B·R, width] (row r of sequence b at b·R + r): ScatterUpdate writes rows in place in O(rows written).
# A KV buffer is one float32 buffer, or in INT8 mode three: int8 non-RoPE dims, float32 RoPE dims, float32 scale.
_scatter_rows = ops.ScatterUpdate()


# Cached step: every Cell gets `cache` (the tuple of Parameters), `ctx` (per-step tensors from
# Transformer.step_context: positions, RoPE multipliers, index lists, write plans) and `step`, a plain tuple of
# constants (graph mode takes tuples, nested at most 6 deep):
#   step = (max_len, ctx_cap, slack, slots, experts, shared_slots)
#   max_len  cache capacity in tokens; ctx_cap the context bucket (a step reads ctx_cap // ratio entries)
#   slack    extra slots of every position-addressed ring (window: W + slack, compressor state: coff·r + slack):
#            a speculative verify of up to slack + 2 tokens is rolled back by rewinding the row's length alone
#            (docs/design.md, "speculative rollback"; ascend_v4/serve/cache.py, CacheLayout)
#   slots    per block (main layers, then MTP): (window KV ids, entries KV ids, (ckv, csc), (ikey, ikv, isc),
#            index of the block's ratio in ctx) — flat cache ids, () / -1 absent
#   experts  per block the pre-stacked routed experts (w1, w2, w3), or None
#   shared_slots  V4.1: (index-key buffer ids of the kv sources, publisher row id) for index_keys="shipped"


def flat_rows(idx, R):
    """idx [B, K] rows of each sequence -> [B·K] rows of a [B·R, w] buffer."""
    B = idx.shape[0]
    return (idx + ops.arange(B, dtype=ms.int32).reshape(B, 1) * R).reshape(-1)


def gather_rows(buf, R, idx):
    """buf [B·R, w], idx [B, K] -> [B, K, w]."""
    return ops.gather(buf, flat_rows(idx, R), 0).reshape(idx.shape[0], idx.shape[1], -1)


def take_rows(x, idx):
    """x [B, N, ...], idx [B, K] int32 in [0, N) -> x[b, idx[b, k]] as [B, K, ...]."""
    B, N = x.shape[0], x.shape[1]
    tail = x.shape[2:]
    flat = (idx + ops.arange(B, dtype=ms.int32).reshape(B, 1) * N).reshape(-1)
    return ops.gather(x.reshape((B * N,) + tail), flat, 0).reshape((B, idx.shape[1]) + tail)


def prefix_rows(buf, B, R, n):
    """The first n rows of each sequence -> [B, n, w] (the whole buffer as a view when n == R)."""
    if n == R:
        return buf.reshape(B, R, -1)
    return gather_rows(buf, R, ops.broadcast_to(ops.arange(n, dtype=ms.int32).reshape(1, n), (B, n)))


def kv_quant(x, nope):
    """[..., hd] float32 -> (int8 [..., nope], rope float32 [..., hd-nope], scale float32 [..., 1] = amax / 127)."""
    head = x[..., :nope]
    amax = ops.amax(ops.abs(head), -1, True)
    scale = ops.maximum(amax, ops.full_like(amax, 1e-12)) / INT8_MAX
    q = ops.clamp(ops.round(head / scale), -INT8_MAX, INT8_MAX)
    return ops.cast(q, ms.int8), x[..., nope:], scale


def kv_dequant(q, rope, scale):
    return ops.concat([ops.cast(q, ms.float32) * scale, rope], -1)


def kv_fake_quant(x, ids, nope):
    """What a KV row reads back as from buffers `ids` (identity for a float32 cache)."""
    if len(ids) == 3:
        q, r, s = kv_quant(x, nope)
        return kv_dequant(q, r, s)
    return x


def kv_buffers(cache, ids):
    """The Parameters of a KV buffer (one, or three in INT8 mode)."""
    if len(ids) == 3:
        return (cache[ids[0]], cache[ids[1]], cache[ids[2]])
    return (cache[ids[0]],)


def kv_read(bufs, B, R, n):
    """First n rows per sequence of a KV buffer (cache entries or a scatter's result) -> [B, n, hd] float32."""
    if len(bufs) == 3:
        return kv_dequant(prefix_rows(bufs[0], B, R, n), prefix_rows(bufs[1], B, R, n), prefix_rows(bufs[2], B, R, n))
    return prefix_rows(bufs[0], B, R, n)


def kv_gather(bufs, R, idx):
    if len(bufs) == 3:
        return kv_dequant(gather_rows(bufs[0], R, idx), gather_rows(bufs[1], R, idx), gather_rows(bufs[2], R, idx))
    return gather_rows(bufs[0], R, idx)


def kv_assign(cache, ids, value, nope):
    """value [B, R, hd] -> the whole buffer."""
    rows = value.shape[0] * value.shape[1]
    if len(ids) == 3:
        q, r, s = kv_quant(value, nope)
        ops.assign(cache[ids[0]], q.reshape(rows, -1))
        ops.assign(cache[ids[1]], r.reshape(rows, -1))
        ops.assign(cache[ids[2]], s.reshape(rows, -1))
    else:
        ops.assign(cache[ids[0]], value.reshape(rows, -1))


def kv_scatter(cache, ids, flat, value, nope):
    """flat [K] buffer rows, value [K, hd] -> the updated buffers (in place, O(K)). Reads through the returned
    tuple are ordered after the write (a read of the raw Parameter is not)."""
    if len(ids) == 3:
        q, r, s = kv_quant(value, nope)
        return (_scatter_rows(cache[ids[0]], flat, q), _scatter_rows(cache[ids[1]], flat, r),
                _scatter_rows(cache[ids[2]], flat, s))
    return (_scatter_rows(cache[ids[0]], flat, value),)


def after(x, bufs):
    """x, ordered after every write in bufs (a write nobody reads would otherwise be pruned from the graph)."""
    for b in bufs:
        x = ops.depend(x, b)
    return x


def _prefix_padded(buf, B, R, n):
    """The first n rows per sequence of a [B·R, w] buffer, zero rows past R."""
    rows = prefix_rows(buf, B, R, min(n, R))
    if R < n:
        rows = ops.concat([rows, ops.zeros((B, n - R, rows.shape[-1]), rows.dtype)], 1)
    return rows


# --------------------------------------------------------------------------------------------- attention
def _same_doc(idx, seg, key_seg_first, key_seg_last):
    """-1 out the candidates idx [B,S,K] whose key (rows of key_seg_* [B,N]) is not wholly in the query's doc."""
    B, S, K = idx.shape
    safe = ops.where(idx >= 0, idx, ops.zeros_like(idx)).reshape(B, S * K)
    f = ops.gather_elements(key_seg_first, 1, safe).reshape(B, S, K)
    l = ops.gather_elements(key_seg_last, 1, safe).reshape(B, S, K)
    q = ops.expand_dims(seg, -1)
    ok = ops.logical_and(idx >= 0, ops.logical_and(f == q, l == q))
    return ops.where(ok, idx, -ops.ones_like(idx))


class Compressor(nn.Cell):
    """Gated softmax pooling of `ratio` tokens into one entry (overlapping windows when ratio == 4), RMSNorm,
    RoPE at the block's first position (the reference's Compressor; docs/design.md, "compressor").

    Full forward: every complete block of the sequence through the compress_kv op. Cached step (`step`): the
    reference's decode form with tensor positions — the state holds position a in slot a mod coff·r (overlap: the
    previous and the current block), kv 0 / score -1e30 at sequence start, nothing ever shifts; each block whose
    last token falls inside the step is pooled and written to its entry row."""

    def __init__(self, cfg: ModelConfig, ratio: int, head_dim: int, dtype=ms.float32):
        super().__init__()
        self.ratio = ratio
        self.overlap = ratio == 4
        coff = 2 if self.overlap else 1
        self.eps = cfg.norm_eps
        self.head_dim, self.nope = head_dim, head_dim - cfg.rope_head_dim
        self.tab = 0 if head_dim == cfg.head_dim else 1        # which width of a decode step's RoPE multipliers
        self.wkv = Linear(cfg.dim, coff * head_dim, dtype)
        # DeepSeek-V4.1 (docs/deepseek-v4.1.md, "CSA-v2"): no position bias `ape`, and ratio 1 has no gate. The
        # compress_kv op then runs with a zero bias and, at ratio 1, the kv weight as gate: a softmax over one slot
        # is exactly 1, so the entry is norm(wkv(x)) as the reference computes it.
        self.v41 = cfg.version == "v4.1"
        self.gated = not (self.v41 and ratio == 1)
        if self.gated:
            self.wgate = Linear(cfg.dim, coff * head_dim, dtype)
        if self.v41:
            self.ape = Tensor(np.zeros((ratio, coff * head_dim), np.float32))
        else:
            self.ape = _param((ratio, coff * head_dim))
        self.norm = RMSNorm(head_dim, cfg.norm_eps, dtype)
        self.rope = Rope(head_dim, cfg.rope_head_dim)
        self._compress = v4ops.resolve("compress_kv").fn
        # V4 indexer keys in a serving cache: stored as the indexer scores them (Hadamard + FP4, Indexer sets it),
        # so a cached step rotates each key once, when it is written, instead of every key at every step
        self.rotate_stored = False

    def stored(self, ent):
        """An entry as its cache buffer holds it."""
        return fp4_rotate(ent) if self.rotate_stored else ent

    def gate_weight(self):
        return self.wgate.weight if self.gated else self.wkv.weight

    def latent(self, x):
        """Every complete group of the sequence -> normed entries [B, S // ratio, c] before RoPE."""
        return self._compress(x, self.wkv.weight, self.gate_weight(), self.ape, self.norm.weight, self.ratio,
                              self.overlap, self.eps)

    def rope_entries(self, c, cos, sin):
        """RoPE of entry j at its group's first position j·ratio."""
        n = c.shape[1]
        return self.rope(c, cos[:n * self.ratio:self.ratio].reshape(1, n, -1),
                         sin[:n * self.ratio:self.ratio].reshape(1, n, -1))

    def construct(self, x, cos, sin):
        return self.rope_entries(self.latent(x), cos, sin)

    def pool(self, kv, score, axis):
        """Softmax over the block's slots per channel, weighted sum, RMSNorm (compress_kv's pooling, on state)."""
        return rms_norm(ops.sum(kv * ops.softmax(score, axis), axis), ops.cast(self.norm.weight, ms.float32),
                        self.eps)

    def step(self, x, cache, ctx, step, st, ent_ids, plan, keys=None):
        """Feed this step's tokens: write the entries of every block completed inside the valid tokens and the new
        state, in place. st = cache ids (kv state, score state); ent_ids = the entry
        buffer's ids; plan = this ratio's decode plan from step_context. -> the updated entry buffers.
        keys = (V4.1 indexer, index-key buffer id): also write each new entry's index keys (from the entry before
        RoPE) to the same rows -> (entry buffers, (key buffer,))."""
        max_len, slack = step[0], step[2]
        P, last = ctx[0], ctx[1]
        pos0 = P[:, 0]
        r, B, T, c = self.ratio, x.shape[0], x.shape[1], self.head_dim
        coff = 2 if self.overlap else 1
        n_s = coff * r + slack               # state slots (the slack keeps a rejected draft's writes unread)
        xf = ops.cast(x, ms.float32)
        kvp = linear(xf, ops.cast(self.wkv.weight, ms.float32))
        scp = linear(xf, ops.cast(self.gate_weight(), ms.float32)) + ops.gather(
            ops.cast(self.ape, ms.float32), (P % r).reshape(-1), 0).reshape(B, T, coff * c)
        if T == 1:
            return self._step1(cache, st, ent_ids, kvp, scp, plan, keys)
        kv_state = cache[st[0]].reshape(B, n_s + 1, -1)
        sc_state = cache[st[1]].reshape(B, n_s + 1, -1)
        E_kv = ops.concat([kv_state, kvp], 1)                     # [B, n_s + 1 + T, coff·c]
        E_sc = ops.concat([sc_state, scp], 1)
        n_e = n_s + 1 + T
        p0 = pos0.reshape(-1, 1)

        def row_of(a):
            """positions a [B, K] -> rows of E: this step's rows for a >= pos0, else the state slot (which still
            holds a: every position read is among the coff·r before pos0; a < 0 finds a never-written slot)."""
            return ops.clip(ops.where(a >= p0, n_s + 1 + (a - p0), a % n_s), 0, n_e - 1)

        # blocks ending inside this step
        M = (T + r - 1) // r
        blk = p0 // r + ops.arange(M, dtype=ms.int32).reshape(1, M)                            # [B, M]
        emit = blk * r + (r - 1) <= last.reshape(-1, 1)
        u = ops.arange(r, dtype=ms.int32).reshape(1, 1, r)
        a_cur = (ops.expand_dims(blk, -1) * r + u).reshape(B, M * r)
        cur_kv = take_rows(E_kv, row_of(a_cur)).reshape(B, M, r, coff * c)
        cur_sc = take_rows(E_sc, row_of(a_cur)).reshape(B, M, r, coff * c)
        if self.overlap:
            a_prev = a_cur - r
            prev_kv = take_rows(E_kv, row_of(a_prev)).reshape(B, M, r, coff * c)
            prev_sc = take_rows(E_sc, row_of(a_prev)).reshape(B, M, r, coff * c)
            pool_kv = ops.concat([prev_kv[..., :c], cur_kv[..., c:]], 2)
            pool_sc = ops.concat([prev_sc[..., :c], cur_sc[..., c:]], 2)
        else:
            pool_kv, pool_sc = cur_kv, cur_sc
        yc, ys = ctx[6]
        pos_e = blk * r                                                                      # block's first token
        latent = self.pool(pool_kv, pool_sc, 2)                                              # [B, M, c]
        ent = self.rope(latent, *full_width(table_at(yc, pos_e), table_at(ys, pos_e), c))
        nmax = max_len // r
        row = ops.where(emit, blk, ops.full_like(blk, nmax))                  # non-ending blocks -> scratch row
        bufs = kv_scatter(cache, ent_ids, flat_rows(row, nmax + 1), self.stored(ent.reshape(B * M, c)), self.nope)
        if keys is not None:
            idx, kid = keys
            k = idx.key_rows(latent, *full_width(table_at(yc, pos_e), table_at(ys, pos_e), idx.head_dim))
            bufs = (bufs, (_scatter_rows(cache[kid], flat_rows(row, nmax + 1), k.reshape(B * M, -1)),))
        # the new state: slot s keeps the latest position <= last congruent to s
        rows = B * (n_s + 1)
        ops.assign(cache[st[0]], self._state_after(kv_state, kvp, last, p0, n_s).reshape(rows, -1))
        ops.assign(cache[st[1]], self._state_after(sc_state, scp, last, p0, n_s).reshape(rows, -1))
        return bufs

    @staticmethod
    def _state_after(state, new, last, p0, n_s):
        """state [B, n_s + 1, w], new [B, T, w] -> the state holding, per slot, the latest position <= last."""
        T = new.shape[1]
        L = last.reshape(-1, 1)
        s = ops.arange(n_s, dtype=ms.int32).reshape(1, n_s)
        a = L - ((L - s) % n_s)
        use = ops.expand_dims(a >= p0, -1)
        j = ops.clip(a - p0, 0, T - 1)
        return ops.concat([ops.where(use, take_rows(new, j), state[:, :n_s]), state[:, n_s:]], 1)

    def _step1(self, cache, st, ent_ids, kvp, scp, plan, keys=None):
        """T == 1 (decode): the token into slot p mod n_s in place; pool the block that p would end (its entry goes
        to the scratch row unless p ends it: pooling every step measured cheaper than graph control flow on "any
        row emits"). Same state and entries as the general path."""
        r, B, c = self.ratio, kvp.shape[0], self.head_dim
        slot_idx, cur_rows, prev_rows, index, c_hd, s_hd, c_di, s_di = plan[0] if self.overlap else plan[1]
        fkv = _scatter_rows(cache[st[0]], slot_idx, kvp.reshape(B, -1))        # [B·(n_s+1), coff·c]
        fsc = _scatter_rows(cache[st[1]], slot_idx, scp.reshape(B, -1))
        if self.overlap:
            pool_kv = ops.concat([ops.gather(fkv, prev_rows, 0).reshape(B, r, -1)[..., :c],
                                  ops.gather(fkv, cur_rows, 0).reshape(B, r, -1)[..., c:]], 1)
            pool_sc = ops.concat([ops.gather(fsc, prev_rows, 0).reshape(B, r, -1)[..., :c],
                                  ops.gather(fsc, cur_rows, 0).reshape(B, r, -1)[..., c:]], 1)
        else:
            pool_kv = ops.gather(fkv, cur_rows, 0).reshape(B, r, c)
            pool_sc = ops.gather(fsc, cur_rows, 0).reshape(B, r, c)
        latent = self.pool(pool_kv, pool_sc, 1)                                              # [B, c]
        ent = self.rope(latent, c_hd, s_hd) if self.tab == 0 else self.rope(latent, c_di, s_di)
        bufs = kv_scatter(cache, ent_ids, index, self.stored(ent), self.nope)
        if keys is None:
            return bufs
        idx, kid = keys
        return bufs, (_scatter_rows(cache[kid], index, idx.key_rows(latent, c_di, s_di)),)


class Indexer(nn.Cell):
    """Lightning indexer of CSA layers: scores compressed entries with Σ_h w·ReLU(q·k), keeps the top-k.

    DeepSeek-V4.1 (layer_id given, docs/deepseek-v4.1.md "CSA-v2"): no compressor of its own — a kv source derives
    its index keys from the attention compressor's latent (`keys`: k_norm(wk(latent)), RoPE at the group position);
    other index sources score the kv source's keys. q and k are FP4 quantised without a Hadamard rotation, and the
    two_level_indexer op adds the candidate blocks (level 1 at candidate_source_layer, a mask for later index
    sources)."""

    def __init__(self, cfg: ModelConfig, ratio: int, dtype=ms.float32, layer_id: Optional[int] = None):
        super().__init__()
        self.n_heads, self.head_dim, self.topk, self.ratio = cfg.index_n_heads, cfg.index_head_dim, cfg.index_topk, ratio
        self.wq_b = Linear(cfg.q_lora_rank, cfg.index_n_heads * cfg.index_head_dim, dtype)
        self.weights_proj = Linear(cfg.dim, cfg.index_n_heads, dtype)
        self.v41 = layer_id is not None
        if self.v41:
            self.owns_keys = layer_id in cfg.kv_source_layers
            if self.owns_keys:
                self.wk = Linear(cfg.head_dim, cfg.index_head_dim, dtype)
                self.k_norm = RMSNorm(cfg.index_head_dim, cfg.norm_eps, dtype)
            c = cfg.candidate_source_layer
            self.cand_source = layer_id == c                                       # level 1: build the mask
            self.cand_block, self.cand_blocks = cfg.candidate_block_size, cfg.candidate_topk_blocks
            self.cand_use = 0 <= c < layer_id                                      # level 2: apply it
            self._topk = v4ops.resolve("index_topk_v2").fn
            self._candidates = v4ops.resolve("candidate_mask").fn
        else:
            self.compressor = Compressor(cfg, ratio, cfg.index_head_dim, dtype)
            self._indexer = v4ops.resolve("lightning_indexer").fn
        self.rope = Rope(cfg.index_head_dim, cfg.rope_head_dim)
        self.weight_scale = float(cfg.index_head_dim ** -0.5 * cfg.index_n_heads ** -0.5)
        # V4: Hadamard + FP4 q/k as DeepSeek's indexer (docs/numerics.md); V4.1: FP4 q/k, no rotation
        self.fp4 = bool(cfg.indexer_fp4)
        if not self.v41:
            self.compressor.rotate_stored = self.fp4

    def keys(self, latent, cos, sin):
        """V4.1 kv source: index keys [B, n, d] of the un-rotated compressor latents [B, n, head_dim] (cos/sin the
        RoPE tables: group j at position j·ratio)."""
        n = latent.shape[1]
        r = self.ratio
        return self.key_rows(latent, cos[:n * r:r].reshape(1, n, -1), sin[:n * r:r].reshape(1, n, -1))

    def key_rows(self, latent, cos, sin):
        """k_norm(wk(latent)) RoPE'd by the given multipliers, FP4-QDQ'd as the key cache holds it."""
        k = self.rope(self.k_norm(self.wk(latent)), cos, sin)
        return fp4_quant(k) if self.fp4 else k

    def select_v41(self, x, qr, cos, sin, keys, candidates):
        """V4.1 full forward over the kv source's keys -> (top-k ids [B, S, k] (-1 padded), the candidate mask
        after this layer: built here at the candidate source, else `candidates` unchanged)."""
        S = x.shape[1]
        q, w = self.queries(x, qr, cos[:S].reshape(1, S, 1, -1), sin[:S].reshape(1, S, 1, -1))
        if self.fp4:
            q = fp4_quant(q)
        ids, scores = self._topk(q, keys, w, self.ratio, self.topk, 0, candidates if self.cand_use else None)
        if self.cand_source:
            vis = (ops.arange(S, dtype=ms.int32) + 1) // self.ratio
            candidates = self._candidates(scores, vis, self.cand_blocks, self.cand_block)
        return ids, candidates

    def queries(self, x, qr, cos, sin):
        """-> (index queries [B, S, H, d] RoPE'd, head weights [B, S, H])."""
        B, S = x.shape[0], x.shape[1]
        q = self.rope(self.wq_b(qr).reshape(B, S, self.n_heads, self.head_dim), cos, sin)
        return q, self.weights_proj(x) * self.weight_scale

    def construct(self, x, qr, cos, sin):
        S = x.shape[1]
        q, w = self.queries(x, qr, cos[:S].reshape(1, S, 1, -1), sin[:S].reshape(1, S, 1, -1))
        k = self.compressor(x, cos, sin)
        return self._indexer(q, k, w, self.ratio, self.topk, fp4=self.fp4)

    def select(self, q, w, keys, start, k):
        """Cached step: the same score and selection through the lightning_indexer op, over keys [B, N, d] as the
        cache stores them (already Hadamard-rotated and FP4-QDQ'd, Compressor.stored) for a step whose rows start
        at positions start [B, 1] -> top-k ids [B, T, k] (ascending, -1 padded, ties to the lower id)."""
        if self.fp4:            # the op's Hadamard + FP4 fake-quant of q (docs/numerics.md); keys were at write
            q = fp4_rotate(q)
        return self._indexer(q, keys, w, self.ratio, k, start, fp4=False)


class Attention(nn.Cell):
    """Shared-KV MQA over a 128-token window plus compressed entries (CSA: indexer top-k, HCA: all visible),
    attention sink, inverse RoPE on the output and the grouped low-rank output projection (the reference's
    Attention; docs/design.md).

    construct(x, cos, sin, seg) is the full forward; step(x, cache, step, slots) the cached step (same projections,
    same op, same output; the context is [window ring | this step's kv | entries] read from the cache).

    Tensor parallel (`parallel.tp` > 1): this rank holds n_heads/tp query heads (wq_b rows, attn_sink) and
    o_groups/tp output groups (wo_a rows, wo_b columns); the shared KV head, compressor and indexer are replicated.
    The query latent and the KV rows enter the head-split region through CopyToTensorParallel, and wo_b's partial
    sums leave it through ReduceFromTensorParallel."""

    def __init__(self, layer_id: int, cfg: ModelConfig, dtype=ms.float32, parallel=None):
        super().__init__()
        tp = parallel.tp if parallel is not None else 1
        self.tp = tp
        self.n_heads, self.head_dim, self.rope_dim = cfg.n_heads // tp, cfg.head_dim, cfg.rope_head_dim
        self.nope = cfg.head_dim - cfg.rope_head_dim
        self.window = cfg.window_size
        self.ratio = cfg.ratio(layer_id)
        self.n_groups, self.o_lora_rank = cfg.o_groups // tp, cfg.o_lora_rank
        self.eps = cfg.norm_eps
        self.scale = float(cfg.head_dim ** -0.5)
        self.attn_sink = _param((self.n_heads,))
        self.wq_a = Linear(cfg.dim, cfg.q_lora_rank, dtype)
        self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps, dtype)
        self.wq_b = Linear(cfg.q_lora_rank, self.n_heads * cfg.head_dim, dtype)
        self.wkv = Linear(cfg.dim, cfg.head_dim, dtype)
        self.kv_norm = RMSNorm(cfg.head_dim, cfg.norm_eps, dtype)
        self.wo_a = Linear(cfg.n_heads * cfg.head_dim // cfg.o_groups, self.n_groups * cfg.o_lora_rank, dtype)
        self.wo_b = Linear(self.n_groups * cfg.o_lora_rank, cfg.dim, dtype)
        self.rope = Rope(cfg.head_dim, cfg.rope_head_dim)
        if tp > 1:
            from .parallel import CopyToTensorParallel, ReduceFromTensorParallel
            self.tp_in_q = CopyToTensorParallel(parallel)
            self.tp_in_kv = CopyToTensorParallel(parallel)
            self.tp_out = ReduceFromTensorParallel(parallel)
        self.v41 = cfg.version == "v4.1"
        if self.v41:
            # CSA-v2 sharing (docs/deepseek-v4.1.md): only kv sources compress (and publish index keys), only index
            # sources run an indexer; the others read the latest source's cache / top-k, handed down the layers.
            self.kv_source = layer_id in cfg.kv_source_layers
            self.has_indexer = layer_id in cfg.index_source_layers
            self.layer_id = layer_id
            self.dspark = layer_id >= cfg.n_layers          # a DSpark drafter stage (forward_dspark)
            # index_keys="shipped" (Transformer): a cached step scores against the last publisher's keys, as
            # DeepSeek's released decode does (docs/deepseek-v4.1.md, "Decode index keys")
            self.shipped = False
            self.sources = tuple((s, cfg.ratio(s)) for s in cfg.kv_source_layers)
            if self.kv_source:
                self.compressor = Compressor(cfg, self.ratio, cfg.head_dim, dtype)
            if self.has_indexer:
                self.indexer = Indexer(cfg, self.ratio, dtype, layer_id)
        else:
            self.has_indexer = self.ratio == 4
            if self.ratio:
                self.compressor = Compressor(cfg, self.ratio, cfg.head_dim, dtype)
            if self.has_indexer:
                self.indexer = Indexer(cfg, self.ratio, dtype)
        self._attend = v4ops.resolve("sparse_attention").fn
        self._attend_hca = v4ops.resolve("hca_attention").fn
        self._eye = Tensor(np.eye(self.n_groups, dtype=np.float32).reshape(1, self.n_groups, self.n_groups, 1))

    def _qkv(self, x, cos, sin, cos_h, sin_h):
        """-> (query latent qr, queries [B, S, H, hd] with the weightless per-head norm, kv [B, S, hd]), RoPE'd."""
        B, S = x.shape[0], x.shape[1]
        qr = self.q_norm(self.wq_a(x))
        q = self.wq_b(self.tp_in_q(qr) if self.tp > 1 else qr).reshape(B, S, self.n_heads, self.head_dim)
        if not self.v41:                                                # V4.1 removed it
            q = rms_norm(q, None, self.eps)                              # per-head norm, no weight
        return qr, self.rope(q, cos_h, sin_h), self.rope(self.kv_norm(self.wkv(x)), cos, sin)

    def _full_qkv(self, x, cos, sin):
        """The start of a full forward from position 0 (construct, forward_v41): queries and kv RoPE'd with the
        block's tables -> (qr, q, kv, window index lists [B, S, min(S, W)], head-broadcast RoPE multipliers)."""
        B, S = x.shape[0], x.shape[1]
        cs, sn = cos[:S].reshape(1, S, 1, -1), sin[:S].reshape(1, S, 1, -1)
        qr, q, kv = self._qkv(x, cos[:S].reshape(1, S, -1), sin[:S].reshape(1, S, -1), cs, sn)
        win_idx = ops.broadcast_to(ops.expand_dims(window_indices(S, self.window), 0), (B, S, min(S, self.window)))
        return qr, q, kv, win_idx, (cs, sn)

    def construct(self, x, cos, sin, seg=None):
        """seg: optional [B, S] document ids of a packed row; queries then see only their own document."""
        B, S = x.shape[0], x.shape[1]
        qr, q, kv, win_idx, (cs, sn) = self._full_qkv(x, cos, sin)
        if seg is not None:
            win_idx = _same_doc(win_idx, seg, seg, seg)
        cmp_idx = None
        if self.ratio and S >= self.ratio and not self.has_indexer and seg is None:
            # HCA: every visible entry, without materialising an [S, S/ratio] index list
            entries = self.compressor(x, cos, sin)
            kv = ops.concat([kv, ops.cast(entries, kv.dtype)], 1)
            if self.tp > 1:
                kv = self.tp_in_kv(kv)
            o = self._attend_hca(q, kv, self.attn_sink, win_idx, self.ratio, self.scale)
            return self._output(o, cs, sn)
        if self.ratio and S >= self.ratio:
            entries = self.compressor(x, cos, sin)
            if self.has_indexer:
                cmp_idx = self.indexer(x, qr, cos, sin)
            else:
                n = S // self.ratio
                cmp_idx = ops.broadcast_to(ops.expand_dims(compressed_indices(S, self.ratio), 0), (B, S, n))
            if seg is not None:
                # an entry is usable only if every token it pooled is in the query's document
                n = S // self.ratio
                first = [max(i * self.ratio - (self.ratio if self.ratio == 4 else 0), 0) for i in range(n)]
                last = [i * self.ratio + self.ratio - 1 for i in range(n)]
                seg_first = ops.gather(seg, Tensor(np.array(first, np.int32)), 1)
                seg_last = ops.gather(seg, Tensor(np.array(last, np.int32)), 1)
                cmp_idx = _same_doc(cmp_idx, seg, seg_first, seg_last)
            cmp_idx = ops.where(cmp_idx >= 0, cmp_idx + S, cmp_idx)       # entries follow the S raw rows
            kv = ops.concat([kv, ops.cast(entries, kv.dtype)], 1)
        if self.tp > 1:
            kv = self.tp_in_kv(kv)
        o = self._attend(q, kv, self.attn_sink, win_idx, cmp_idx, self.scale)
        return self._output(o, cs, sn)

    def forward_v41(self, x, cos, sin, shared):
        """DeepSeek-V4.1 full forward from position 0. shared = (compressed entries [B, n, hd], index keys
        [B, n, d], top-k ids [B, S, k], level-1 candidate mask [B, S, n]) as the latest sources left them (None
        before the first) -> (output, shared after this layer)."""
        if self.dspark:
            return self.forward_dspark(x, cos, sin, shared)
        S = x.shape[1]
        qr, q, kv, win_idx, (cs, sn) = self._full_qkv(x, cos, sin)
        entries, keys, topk, cand, pubs = shared
        n = S // self.ratio if self.ratio else 0
        if n > 0:
            if self.kv_source:
                latent = self.compressor.latent(x)
                entries = self.compressor.rope_entries(latent, cos, sin)
                keys = self.indexer.keys(latent, cos, sin)
            if self.has_indexer:
                topk, cand = self.indexer.select_v41(x, qr, cos, sin, keys, cand)
            cmp_idx = ops.where(topk >= 0, topk + S, topk)                # entries follow the S window rows
            kv = ops.concat([kv, ops.cast(entries, kv.dtype)], 1)
            o = self._attend(q, self._tp_kv(kv), self.attn_sink, win_idx, cmp_idx, self.scale)
        else:                   # window-only layer, or no complete group yet
            o = self._attend(q, self._tp_kv(kv), self.attn_sink, win_idx, None, self.scale)
        return self._output(o, cs, sn), (entries, keys, topk, cand, pubs)

    def dspark_kv(self, main_x, cos, sin):
        """A DSpark stage's KV rows of the target features main_x [B, T, D] (Transformer.dspark_main_kv) at the
        positions whose RoPE rows are cos / sin [B or 1, T, rope_dim] -> [B, T, head_dim]."""
        return self.rope(self.kv_norm(self.wkv(main_x)), cos, sin)

    def forward_dspark(self, x, cos, sin, ctx):
        """A DSpark stage's attention over drafting blocks (docs/deepseek-v4.1.md, "DSpark"): x [N, T, D] holds N
        blocks of T rows at their own positions (cos / sin [N, T, rope_dim]); every row attends the block's window
        of main KV (dspark_kv rows) and all T block rows (bidirectional). ctx = (window KV [N, W, head_dim],
        index lists [N, T, W + T] into [window ‖ block] (-1 = none)) -> (output [N, T, D], ctx)."""
        ctx_kv, idx = ctx
        cs, sn = ops.expand_dims(cos, 2), ops.expand_dims(sin, 2)
        _, q, kv = self._qkv(x, cos, sin, cs, sn)
        kv = self._tp_kv(ops.concat([ops.cast(ctx_kv, kv.dtype), kv], 1))
        o = self._attend(q, kv, self.attn_sink, idx, None, self.scale)
        return self._output(o, cs, sn), ctx

    def _tp_kv(self, kv):
        """The replicated KV rows (window, compressed entries) entering the head-split region: under tensor
        parallelism each rank's heads give a partial gradient, summed over tp in the backward."""
        return self.tp_in_kv(kv) if self.tp > 1 else kv

    def _output(self, o, cos_h, sin_h):
        B, S = o.shape[0], o.shape[1]
        G, R = self.n_groups, self.o_lora_rank
        o = self.rope(o, cos_h, sin_h, True)                               # back to relative position
        if S <= 2 and G <= 4:
            # decode: one MatMul against the unreshaped [G·R, in] weight, keep each group's own block (G x the MACs
            # of a few rows, but no per-step copy of the reshaped weight, which a CPU reshape of a Parameter makes)
            full = linear(o.reshape(B * S * G, -1), ops.cast(self.wo_a.weight, o.dtype)).reshape(B * S, G, G, R)
            o = ops.sum(full * self._eye, 2).reshape(B, S, G * R)
        else:
            # grouped low-rank output: per group g, [B*S, heads/g*hd] x wo_a[g]ᵀ -> [B*S, r]
            o = o.reshape(B * S, G, -1).swapaxes(0, 1)
            wo_a = ops.cast(self.wo_a.weight, o.dtype).reshape(G, R, -1)
            o = ops.bmm(o, wo_a.swapaxes(1, 2)).swapaxes(0, 1).reshape(B, S, -1)
        if self.tp > 1:
            return self.tp_out(self.wo_b(o))
        return self.wo_b(o)

    def _step_qkv(self, x, cache, ctx, win_ids, R):
        """The start of a cached step (step, step_v41): queries and kv RoPE'd at the step's positions (ctx from
        Transformer.step_context), the kv fake-quantised as the ring will read it back, and the window ring as
        stored (R = W + slack slots + scratch). -> (qr, q, kv, ring [B, R+1, hd], [ring | kv] (what the step attends
        to before its entries), (index-width, kv-width) head-broadcast RoPE multipliers)."""
        B = x.shape[0]
        C, S, Ci, Si, C4, S4, Ci4, Si4 = ctx[2][1 if self.ratio else 0]  # (kv, index width) x (rows, heads)
        qr, q, kv = self._qkv(x, C, S, C4, S4)
        kv = kv_fake_quant(kv, win_ids, self.nope)
        ring = kv_read(kv_buffers(cache, win_ids), B, R + 1, R + 1)
        return qr, q, kv, ring, ops.concat([ring, kv], 1), (Ci4, Si4, C4, S4)

    def _entry_caps(self, step):
        """(nmax, kcap, ncap): the entry buffer's rows (its scratch row excluded), the entries the context bucket can
        hold, and the rows a step reads -- the whole buffer when the bucket covers it (the scratch row is never
        visible; no copy)."""
        max_len, ctx_cap = step[0], step[1]
        nmax = max_len // self.ratio
        kcap = min(ctx_cap, max_len) // self.ratio
        return nmax, kcap, nmax + 1 if kcap == nmax else kcap

    def step(self, x, cache, ctx, step, slots):
        """Cached step over T tokens per row (positions from step_context): attend over [window ring | this
        step's kv | entries], then write this step's kv into the ring and new entries / state in place."""
        win_idx, ring_plan, per_ratio = ctx[3], ctx[4], ctx[5]
        B, T, R = x.shape[0], x.shape[1], self.window + step[2]
        win_ids, ent_ids, st, ist, r_i = slots
        qr, q, kv, ring, kv_all, (Ci4, Si4, C4, S4) = self._step_qkv(x, cache, ctx, win_ids, R)
        cmp_idx = None
        writes = ()
        if self.ratio:
            vis, plan = per_ratio[r_i]                                     # vis [B, T]: visible entries per query
            ent = self.compressor.step(x, cache, ctx, step, st, ent_ids, plan)
            writes = ent
            nmax, kcap, ncap = self._entry_caps(step)
            base = R + 1 + T
            e = ops.arange(ncap, dtype=ms.int32).reshape(1, 1, ncap)
            if self.has_indexer:
                idx = self.indexer
                keys = idx.compressor.step(x, cache, ctx, step, ist[1:], (ist[0],), plan)
                writes = writes + keys
                if kcap > 0:
                    qi, wi = idx.queries(x, qr, Ci4, Si4)
                    k = min(idx.topk, kcap)
                    # the op reads keys only up to each row's last visible entry: O(context), not O(bucket)
                    sel = idx.select(qi, wi, prefix_rows(keys[0], B, nmax + 1, ncap), ctx[0][:, :1], k)   # [B, T, k]
                    if T * k <= ncap:
                        # long-context decode: gather only the picked rows
                        picked = kv_gather(ent, nmax + 1, ops.clip(sel, 0, ncap - 1).reshape(B, T * k))
                        kv_all = ops.concat([kv_all, picked], 1)
                        slot = base + ops.arange(T * k, dtype=ms.int32).reshape(1, T, k)
                        cmp_idx = ops.where(sel >= 0, ops.broadcast_to(slot, (B, T, k)), -ops.ones_like(sel))
                    else:
                        kv_all = ops.concat([kv_all, kv_read(ent, B, nmax + 1, ncap)], 1)
                        cmp_idx = ops.where(sel >= 0, sel + base, -ops.ones_like(sel))
            elif kcap > 0:
                kv_all = ops.concat([kv_all, kv_read(ent, B, nmax + 1, ncap)], 1)
                cmp_idx = ops.where(e < ops.expand_dims(vis, -1), e + base, -ops.ones((B, T, ncap), ms.int32))
        o = self._attend(q, kv_all, self.attn_sink, win_idx, cmp_idx, self.scale)
        # a bucket with no readable entry still feeds every token to the compressors (their state must advance)
        o = after(o, writes)
        self._ring_update(cache, win_ids, ring, kv, ring_plan, o)
        return self._output(o, C4, S4)

    def step_v41(self, x, cache, ctx, step, slots, shared):
        """DeepSeek-V4.1 cached step (the counterpart of forward_v41 over the serving cache): attend over [window
        ring | this step's kv | the kv source's compressed entries]. A kv source feeds its compressor and writes
        entries + index keys; an index source scores its kv source's keys (its OWN group's keys on every step —
        the fix of DeepSeek's decode, docs/deepseek-v4.1.md) through index_topk_v2 / candidate_mask; the others
        reuse. shared = (entry buffers, key buffers, top-k ids, candidate mask) of the latest sources, read through
        the tuples their writes returned (so after the writes) -> (output, shared)."""
        win_idx, ring_plan, per_ratio = ctx[3], ctx[4], ctx[5]
        B, T, R = x.shape[0], x.shape[1], self.window + step[2]
        win_ids, ent_ids, st, ist, r_i = slots
        ent, keys, topk, cand, pubs = shared
        qr, q, kv, ring, kv_all, (Ci4, Si4, C4, S4) = self._step_qkv(x, cache, ctx, win_ids, R)
        cmp_idx = None
        writes = ()
        if self.ratio:
            vis, plan = per_ratio[r_i]
            if self.kv_source:
                ent, keys = self.compressor.step(x, cache, ctx, step, st, ent_ids, plan, (self.indexer, ist[0]))
                writes = ent + keys
                if self.shipped:        # rows where this source completed a group publish its keys
                    pos0, last = ctx[0][:, 0], ctx[1]
                    pubs = pubs + ((self.layer_id, keys, (last + 1) // self.ratio > pos0 // self.ratio),)
            nmax, kcap, ncap = self._entry_caps(step)
            if kcap > 0:
                if self.has_indexer:
                    idx = self.indexer
                    qi, wi = idx.queries(x, qr, Ci4, Si4)
                    if idx.fp4:
                        qi = fp4_quant(qi)
                    k = min(idx.topk, kcap)
                    p0 = ctx[0][:, :1]
                    if self.shipped:
                        kk = self._shipped_keys(cache, step, pubs, B, ncap)
                    else:
                        kk = prefix_rows(keys[0], B, nmax + 1, ncap)
                    topk, scores = idx._topk(qi, kk, wi, self.ratio, k, p0, cand if idx.cand_use else None)
                    if idx.cand_source:
                        cand = idx._candidates(scores, vis, idx.cand_blocks, idx.cand_block)
                kv_all = ops.concat([kv_all, kv_read(ent, B, nmax + 1, ncap)], 1)
                cmp_idx = ops.where(topk >= 0, topk + (R + 1 + T), topk)
        o = self._attend(q, kv_all, self.attn_sink, win_idx, cmp_idx, self.scale)
        o = after(o, writes)        # a step with no readable entry still advances the compressor
        self._ring_update(cache, win_ids, ring, kv, ring_plan, o)
        return self._output(o, C4, S4), (ent, keys, topk, cand, pubs)

    def _shipped_keys(self, cache, step, pubs, B, ncap):
        """The keys DeepSeek's released decode scores against: per row, those of the latest kv source that
        completed a group in this step before this layer, else of the last publisher of an earlier step (the
        cache's publisher row); another layer's cache is read at this layer's positions, as shipped."""
        max_len, key_ids, pub_id = step[0], step[5][0], step[5][1]
        carried = cache[pub_id].reshape(B, 1, 1)
        done = {}
        for s_id, bufs, _ in pubs:
            done[s_id] = bufs
        sel = ops.zeros((B, ncap, self.indexer.head_dim), ms.float32)
        for (s_id, r), kid in zip(self.sources, key_ids):
            buf = done[s_id][0] if s_id in done else cache[kid]
            sel = ops.where(carried == float(s_id), _prefix_padded(buf, B, max_len // r + 1, ncap), sel)
        for s_id, bufs, emitted in pubs:
            r = dict(self.sources)[s_id]
            sel = ops.where(emitted.reshape(B, 1, 1), _prefix_padded(bufs[0], B, max_len // r + 1, ncap), sel)
        return sel

    def _ring_update(self, cache, ids, ring, kv, plan, done):
        """Each ring slot keeps its latest valid position. The write waits for `done` (the attention output), so no
        read of the old ring can see the new one."""
        B, T, R = kv.shape[0], kv.shape[1], ring.shape[1] - 1
        if T == 1:              # in place: one row per sequence
            kv_scatter(cache, ids, plan[0], ops.depend(kv.reshape(B, -1), done), self.nope)
        else:
            new = ops.where(plan[0], take_rows(kv, plan[1]), ring[:, :R])
            kv_assign(cache, ids, ops.depend(ops.concat([new, ring[:, R:]], 1), done), self.nope)


# --------------------------------------------------------------------------------------------------- MoE
def moe_sizes(cfg: ModelConfig, layer_id: int):
    """(routed experts, experts per token) of layer_id: DeepSeek-V4.1's DSpark stages (ids >= n_layers) have their
    own (docs/deepseek-v4.1.md, "DSpark")."""
    if cfg.version == "v4.1" and layer_id >= cfg.n_layers:
        return cfg.dspark_n_routed_experts, cfg.dspark_n_activated_experts
    return cfg.n_routed_experts, cfg.n_activated_experts


class Gate(nn.Cell):
    def __init__(self, layer_id: int, cfg: ModelConfig, dtype=ms.float32):
        super().__init__()
        self.hash = cfg.is_hash_layer(layer_id)
        n_routed, n_act = moe_sizes(cfg, layer_id)
        self.topk, self.route_scale, self.score_func = n_act, cfg.route_scale, cfg.score_func
        self.weight = _param((n_routed, cfg.dim), dtype)
        if self.hash:
            self.tid2eid = _param((cfg.vocab_size, cfg.n_activated_experts), ms.int32, requires_grad=False)
        else:
            # aux-loss-free balancing: moved by the load statistics outside the gradient
            self.bias = _param((n_routed,), requires_grad=False)
        # DeepSeek-V4.1: router logits divided by gate_temp, the chosen weights normalised by their sum + 1e-20
        # (moe_route's gate_temp / eps), and a second bias `bias_vl` that only image tokens use
        # (vision is out of scope here: the parameter is loaded, text tokens never read it).
        v41 = cfg.version == "v4.1"
        self.gate_temp = float(cfg.gate_temp) if v41 else 1.0
        self.norm_eps = 1e-20 if v41 else 0.0
        if v41 and cfg.vision_n_layers > 0:
            self.bias_vl = _param((n_routed,), requires_grad=False)
        self._route = v4ops.resolve("moe_route").fn

    def affinity(self, x):
        logits = linear(ops.cast(x, ms.float32), ops.cast(self.weight, ms.float32)) / self.gate_temp
        if self.score_func == "softmax":
            s = ops.softmax(logits, -1)
        elif self.score_func == "sigmoid":
            s = ops.sigmoid(logits)
        else:
            s = ops.sqrt(ops.softplus(logits))
        return precision.island("router", s)

    def construct(self, x, input_ids):
        if self.hash:
            w, ids = self._route(x, self.weight, None, self.topk, self.route_scale, self.score_func,
                                 input_ids, self.tid2eid)
        elif self.norm_eps:
            w, ids = self._route(x, self.weight, self.bias, self.topk, self.route_scale, self.score_func,
                                 gate_temp=self.gate_temp, eps=self.norm_eps)
        else:
            w, ids = self._route(x, self.weight, self.bias, self.topk, self.route_scale, self.score_func)
        return precision.island("router", w), ids


class Expert(nn.Cell):
    """SwiGLU expert; its weights are stacked by the MoE for grouped execution."""

    def __init__(self, dim: int, inter_dim: int, dtype=ms.float32):
        super().__init__()
        self.w1 = Linear(dim, inter_dim, dtype)
        self.w2 = Linear(inter_dim, dim, dtype)
        self.w3 = Linear(dim, inter_dim, dtype)


class ExpertList(nn.CellList):
    """The routed experts an expert-parallel rank holds, keyed by their global index (parameter names
    `experts.{e}.w1.weight` as in the release); iterated in index order like a CellList."""

    def __init__(self, experts):
        super().__init__()
        for e in sorted(experts):
            self.insert_child_to_cell(str(e), experts[e])

    def __getitem__(self, index):
        if isinstance(index, int):
            return list(self._cells.values())[index]
        return super().__getitem__(index)


class MoE(nn.Cell):
    """1 shared + n_routed experts, top-k routed (the reference's MoE / Gate), through ops/moe/layer.py's MoeExperts:
    moe_init_routing -> grouped expert FFN -> moe_finalize_routing (+ the shared expert's output).

    capacity_factor None = dropless: rows sorted by expert, no [E, T, D] padding (inference, and training by
    default). A float = fixed capacity C = ceil(cf·T·k/E) per expert with static [E, C, D] shapes; assignments
    beyond C are dropped (their weight is lost, the shared expert and the residual still carry the token) and
    counted in forward_stats' `dropped`.

    Tensor parallel: every expert (routed and shared) holds moe_inter_dim/tp of its inter dimension (w1/w3 rows,
    w2 columns); the router is replicated, the tokens and routing weights enter through CopyToTensorParallel and
    the partial expert sums leave through ReduceFromTensorParallel. Expert parallel: this rank holds routed experts
    [ep_rank·E/ep, (ep_rank+1)·E/ep) under their global names and dispatches through ExpertParallelMoeExperts
    (AllGather tokens, local experts, reduce-scatter back; AlltoAll with a fixed capacity on Ascend).
    """

    def __init__(self, layer_id: int, cfg: ModelConfig, dtype=ms.float32, capacity_factor: Optional[float] = None,
                 parallel=None):
        super().__init__()
        tp = parallel.tp if parallel is not None else 1
        ep = parallel.ep if parallel is not None else 1
        self.tp, self.ep = tp, ep
        n_routed = moe_sizes(cfg, layer_id)[0]
        self.n_experts, self.limit = n_routed, float(cfg.swiglu_limit)
        self.shared_limit = self.limit if cfg.shared_expert_clamp else 0.0   # launch revision: unclamped
        self.capacity_factor = capacity_factor
        self.gate = Gate(layer_id, cfg, dtype)
        inter = cfg.moe_inter_dim // tp
        if ep > 1:
            self.experts = ExpertList({e: Expert(cfg.dim, inter, dtype)
                                       for e in parallel.local_experts(n_routed)})
        else:
            self.experts = nn.CellList([Expert(cfg.dim, inter, dtype) for _ in range(n_routed)])
        self.has_shared = cfg.n_shared_experts > 0
        if self.has_shared:
            self.shared_experts = Expert(cfg.dim, inter, dtype)
        if ep > 1 and parallel.simulated:      # one process playing an ep rank: the simulation brings the Cell
            self.routed = parallel.routed_experts(cfg, capacity_factor)
        elif ep > 1:
            from .ops.moe.parallel import ExpertParallelMoeExperts
            self.routed = ExpertParallelMoeExperts(n_routed, cfg.swiglu_limit, ep, parallel.ep_rank,
                                                   group=parallel.group("ep"), capacity_factor=capacity_factor)
        else:
            self.routed = MoeExperts(n_routed, cfg.swiglu_limit, capacity_factor=capacity_factor)
        if tp > 1:
            from .parallel import CopyToTensorParallel, ReduceFromTensorParallel
            self.tp_in_x = CopyToTensorParallel(parallel)
            self.tp_in_w = CopyToTensorParallel(parallel)
            self.tp_out = ReduceFromTensorParallel(parallel)
        self._ffn = v4ops.resolve("expert_ffn").fn          # the shared expert: one group of all T tokens

    def _stacked(self, dtype):
        w1, w2, w3 = (), (), ()
        for e in self.experts:
            w1 = w1 + (e.w1.weight,)
            w2 = w2 + (e.w2.weight,)
            w3 = w3 + (e.w3.weight,)
        return ops.cast(ops.stack(w1), dtype), ops.cast(ops.stack(w2), dtype), ops.cast(ops.stack(w3), dtype)

    def _shared(self, x):
        # one group of all T tokens; reshape, not [0]: that StridedSlice copy cost ~3 ms per layer at [512, 256] on CPU
        s = self.shared_experts
        return self._ffn(ops.expand_dims(x, 0), ops.expand_dims(ops.cast(s.w1.weight, x.dtype), 0),
                         ops.expand_dims(ops.cast(s.w2.weight, x.dtype), 0),
                         ops.expand_dims(ops.cast(s.w3.weight, x.dtype), 0), self.shared_limit).reshape(x.shape)

    def construct(self, x, input_ids):
        return self.forward_stats(x, input_ids)[0]

    def forward_stats(self, x, input_ids, experts=None):
        """-> (y, affinities s [T, E] before bias, selected expert ids [T, k], dropped assignments (int32)): what
        the balance loss, the aux-loss-free bias update and the overflow report need. Graph mode prunes the
        extras when the caller drops them. experts: the routed experts pre-stacked (w1, w2, w3) — serving keeps
        one stacked copy instead of stacking every expert weight on every call."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, ids = self.gate(x, input_ids)
        w1, w2, w3 = self._stacked(x.dtype) if experts is None else experts
        xe, we = x, weights
        if self.tp > 1:
            xe, we = self.tp_in_x(x), self.tp_in_w(weights)
        shared = self._shared(xe) if self.has_shared else None
        y, dropped = self.routed(xe, we, ids, w1, w2, w3, shared)
        if self.tp > 1:
            y = self.tp_out(y)
        return ops.cast(y, x.dtype).reshape(shape), self.gate.affinity(x), ids, dropped


# ----------------------------------------------------------------------------------------- blocks & model
class Engram(nn.Cell):
    """DeepSeek-V4.1's Engram before a block (docs/deepseek-v4.1.md, "Engram"): the rows of the token's hashed
    n-grams (gathered on the host from tables in host memory: `rows` [B, S, columns·engram_head_dim]) -> wkv ->
    the gated read into each mHC stream (engram_gate op). The table itself is not a parameter of the model."""

    def __init__(self, cfg: ModelConfig, dtype=ms.float32):
        super().__init__()
        self.eps = cfg.norm_eps
        self.wkv = Linear(cfg.engram_n_columns * cfg.engram_head_dim, (cfg.hc_mult + 1) * cfg.dim, dtype)
        self.q_weight = _param((cfg.hc_mult, cfg.dim), dtype)
        self.k_weight = _param((cfg.hc_mult, cfg.dim), dtype)
        self._gate = v4ops.resolve("engram_gate").fn

    def construct(self, h, rows, alive):
        # precision.act: the gathered rows enter as bf16 (h's dtype) and the new streams are bf16 under the bf16
        # policy; the gate's dot products and sigmoid are float32 inside the engram_gate op
        rows = precision.act(ops.cast(rows, h.dtype))
        return precision.act(self._gate(h, self.wkv(rows), self.q_weight, self.k_weight, alive, self.eps))


class Block(nn.Cell):
    """Two mHC-wrapped sublayers: attention then MoE. The residual path is entirely comb (the reference's
    Block.hc_pre / hc_post; docs/design.md, "mHC")."""

    def __init__(self, layer_id: int, cfg: ModelConfig, dtype=ms.float32, moe_capacity_factor: Optional[float] = None,
                 parallel=None):
        super().__init__()
        self.layer_id = layer_id
        self.iters, self.hc_eps, self.norm_eps = cfg.hc_sinkhorn_iters, cfg.hc_eps, cfg.norm_eps
        mix, width = cfg.hc_mix_dim, cfg.hc_mult * cfg.dim
        self.attn = Attention(layer_id, cfg, dtype, parallel)
        self.ffn = MoE(layer_id, cfg, dtype, moe_capacity_factor, parallel)
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps, dtype)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps, dtype)
        self.hc_attn_fn, self.hc_ffn_fn = _param((mix, width)), _param((mix, width))
        self.hc_attn_base, self.hc_ffn_base = _param((mix,)), _param((mix,))
        self.hc_attn_scale, self.hc_ffn_scale = _param((3,)), _param((3,))
        self._hc_pre = v4ops.resolve("hc_pre").fn
        self._hc_post = v4ops.resolve("hc_post").fn
        self.v41 = cfg.version == "v4.1"
        if self.v41:
            self._hc_mix = v4ops.resolve("hc_mixes").fn
            if layer_id in cfg.engram_layer_ids:
                self.engram = Engram(cfg, dtype)

    def construct(self, h, input_ids, cos, sin, seg=None, stats=False, pre=None, shared=None, rows=None,
                  alive=None):
        # stats=True: forward_stats' tuple. Calling the Cell (not the method) is what MindSpore's Cell.recompute()
        # acts on (train `recompute: true`); a V4.1 block's full forward comes through here too (pre, shared,
        # rows, alive: forward_v41's arguments; Transformer.run_layers_v41).
        if self.v41:
            return self.forward_v41(h, pre, input_ids, cos, sin, shared, rows, alive, stats=stats)
        out = self.forward_stats(h, input_ids, cos, sin, seg)
        return out if stats else out[0]

    def forward_stats(self, h, input_ids, cos, sin, seg=None, cache=None, ctx=None, step=None):
        """-> (streams, router affinities [T, E], expert ids [T, k], dropped expert assignments).
        Full forward (cache None, cos/sin the block's RoPE tables) or a cached step (cache, ctx, step; see above)."""
        # precision.act: where the bf16 policy holds bf16 activations; island: mHC's float32 mixes
        x, post, comb = self._hc_pre(h, self.hc_attn_fn, self.hc_attn_scale, self.hc_attn_base,
                                     self.iters, self.hc_eps, self.norm_eps)
        x, post, comb = precision.act(x), precision.island("mhc", post), precision.island("mhc", comb)
        if cache is None:
            a = self.attn(self.attn_norm(x), cos, sin, seg)
            experts = None
        else:
            a = self.attn.step(self.attn_norm(x), cache, ctx, step, step[3][self.layer_id])
            experts = None if step[4] is None else step[4][self.layer_id]
        h = precision.act(self._hc_post(precision.act(a), h, post, comb))
        x, post, comb = self._hc_pre(h, self.hc_ffn_fn, self.hc_ffn_scale, self.hc_ffn_base,
                                     self.iters, self.hc_eps, self.norm_eps)
        x, post, comb = precision.act(x), precision.island("mhc", post), precision.island("mhc", comb)
        f, aff, ids, dropped = self.ffn.forward_stats(self.ffn_norm(x), input_ids, experts)
        return precision.act(self._hc_post(precision.act(f), h, post, comb)), aff, ids, dropped


    def forward_v41(self, h, pre_in, input_ids, cos, sin, shared, rows=None, alive=None, cache=None, ctx=None,
                    step=None, stats=False):
        """DeepSeek-V4.1's block with pipelined mHC (docs/deepseek-v4.1.md, "pipelined mHC"): each sublayer's
        input is collapsed with the `pre` of the sublayer before it (pre_in: the previous block's FFN `pre`, or
        one-hot on stream 0 for block 0), while post/comb stay with the sublayer that computed them; Engram (rows
        given) updates the streams first. Full forward (cache None, cos/sin the block's RoPE tables) or a cached
        step (cache, ctx, step; attention over the serving cache, see Attention.step_v41).
        -> (streams, this block's FFN pre [B, S, hc], shared CSA state), with stats=True also the MoE's (router
        affinities, expert ids, dropped assignments) (training)."""
        # precision: the same rounding points as forward_stats (the sublayer input, its output, the new streams)
        # and mHC's float32 mixes as an island; pre/post/comb stay float32 from one sublayer to the next
        if rows is not None:
            h = self.engram(h, rows, alive)
        a_pre, post, comb = self._hc_mixes(h, self.hc_attn_fn, self.hc_attn_scale, self.hc_attn_base)
        x = self.attn_norm(precision.act(hc_collapse(h, pre_in)))
        experts = None
        if cache is None:
            a, shared = self.attn.forward_v41(x, cos, sin, shared)
        else:
            a, shared = self.attn.step_v41(x, cache, ctx, step, step[3][self.layer_id], shared)
            experts = None if step[4] is None else step[4][self.layer_id]
        h = precision.act(self._hc_post(precision.act(a), h, post, comb))
        f_pre, post, comb = self._hc_mixes(h, self.hc_ffn_fn, self.hc_ffn_scale, self.hc_ffn_base)
        f, aff, ids, dropped = self.ffn.forward_stats(self.ffn_norm(precision.act(hc_collapse(h, a_pre))),
                                                      input_ids, experts)
        out = precision.act(self._hc_post(precision.act(f), h, post, comb))
        if stats:
            return out, f_pre, shared, (aff, ids, dropped)
        return out, f_pre, shared

    def _hc_mixes(self, h, fn, scale, base):
        """V4.1's pipelined mHC mixes (pre, post, comb), float32 islands."""
        pre, post, comb = self._hc_mix(h, fn, scale, base, self.iters, self.hc_eps, self.norm_eps)
        return precision.island("mhc", pre), precision.island("mhc", post), precision.island("mhc", comb)


class HcHead(nn.Cell):
    """Collapse the streams with sigmoid weights, RMSNorm, project to the vocabulary."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.hc_eps, self.norm_eps = cfg.hc_eps, cfg.norm_eps
        self._hc_head = v4ops.resolve("hc_head").fn

    def construct(self, h, fn, scale, base, norm, head_w):
        y = self._hc_head(h, fn, scale, base, self.hc_eps, self.norm_eps)
        return precision.island("logits", linear(ops.cast(norm(y), ms.float32), ops.cast(head_w, ms.float32)))


class MTPBlock(Block):
    """Multi-token prediction: a full (SWA-only, non-hash) block fed with enorm(embed(next ids)) and
    hnorm(main streams); shares the main model's embedding and head (the reference's MTPBlock)."""

    def __init__(self, layer_id: int, cfg: ModelConfig, dtype=ms.float32, moe_capacity_factor: Optional[float] = None,
                 parallel=None):
        super().__init__(layer_id, cfg, dtype, moe_capacity_factor, parallel)
        self.e_proj = Linear(cfg.dim, cfg.dim, dtype)
        self.h_proj = Linear(cfg.dim, cfg.dim, dtype)
        self.enorm = RMSNorm(cfg.dim, cfg.norm_eps, dtype)
        self.hnorm = RMSNorm(cfg.dim, cfg.norm_eps, dtype)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps, dtype)
        self.hc_head_fn = _param((cfg.hc_mult, cfg.hc_mult * cfg.dim))
        self.hc_head_base = _param((cfg.hc_mult,))
        self.hc_head_scale = _param((1,))

    def mtp_streams(self, h_main, e_next, input_ids, cos, sin, seg=None, cache=None, ctx=None, step=None):
        x = ops.expand_dims(self.e_proj(self.enorm(e_next)), 2) + self.h_proj(self.hnorm(h_main))
        return Block.forward_stats(self, x, input_ids, cos, sin, seg, cache, ctx, step)


class MarkovHead(nn.Cell):
    """DSpark's Markov head: a low-rank bias embed[o]·headᵀ of the previous token o on the next row's logits.
    construct(o int32 [...]) -> (embed[o] [..., rank], bias [..., V]), both float32."""

    def __init__(self, cfg: ModelConfig, dtype=ms.float32):
        super().__init__()
        self.embed = Embedding(cfg.vocab_size, cfg.dspark_markov_rank, dtype)
        self.head = Linear(cfg.dspark_markov_rank, cfg.vocab_size, dtype)

    def construct(self, prev_ids):
        e = ops.cast(self.embed(prev_ids), ms.float32)
        return e, linear(e, ops.cast(self.head.weight, ms.float32))


class ConfidenceHead(nn.Cell):
    """DSpark's confidence readout: proj·[hidden ‖ the Markov embedding of the previous token], raw (a logit).
    construct(hidden [..., D], markov embedding [..., rank]) -> [...] float32."""

    def __init__(self, cfg: ModelConfig, dtype=ms.float32):
        super().__init__()
        self.proj = Linear(cfg.dim + cfg.dspark_markov_rank, 1, dtype)

    def construct(self, x, emb):
        feat = ops.concat([ops.cast(x, ms.float32), ops.cast(emb, ms.float32)], -1)
        return ops.squeeze(linear(feat, ops.cast(self.proj.weight, ms.float32)), -1)


class DSparkStage(Block):
    """One stage `mtp.{k}` of DeepSeek-V4.1's DSpark drafter (docs/deepseek-v4.1.md, "DSpark"): a full V4.1 Block
    with window-only attention over [main_x window ‖ the drafting block] (Attention.forward_dspark); stage 0 adds
    main_proj / main_norm (the target features), the last stage norm, the Markov head and the confidence head."""

    def __init__(self, k: int, cfg: ModelConfig, dtype=ms.float32, moe_capacity_factor: Optional[float] = None,
                 parallel=None):
        super().__init__(cfg.n_layers + k, cfg, dtype, moe_capacity_factor, parallel)
        D = cfg.dim
        if k == 0:
            self.main_proj = Linear(len(cfg.dspark_target_layer_ids) * D, D, dtype)
            self.main_norm = RMSNorm(D, cfg.norm_eps, dtype)
        if k == cfg.n_mtp_layers - 1:
            self.norm = RMSNorm(D, cfg.norm_eps, dtype)
            self.markov_head = MarkovHead(cfg, dtype)
            self.confidence_head = ConfidenceHead(cfg, dtype)


class Transformer(nn.Cell):
    """The whole DeepSeek-V4 model. construct(ids [B,S]) -> logits [B,S,V] for every position; with
    `return_hidden=True` also the embedding and each block's 4-stream output (the dump/compare points).

    parallel: an ascend_v4.parallel.ParallelContext (tensor / expert parallel training) or None (everything on
    this process). Parameters keep their official names and hold this rank's slice (see ascend_v4/parallel.py)."""

    def __init__(self, cfg: ModelConfig, max_seq_len: int = 4096, param_dtype=None,
                 return_hidden: bool = False, with_mtp: bool = True, moe_capacity_factor: Optional[float] = None,
                 parallel=None, index_keys: str = "own", with_dspark: bool = False):
        super().__init__()
        cfg.validate()
        param_dtype = precision.param_dtype() if param_dtype is None else param_dtype   # bf16 on Ascend
        v4ops.registry.use_model_shapes(cfg)      # the sizes vendor-operator limits are checked against
        self.cfg = cfg
        self.parallel = parallel
        if parallel is not None:
            parallel.check(cfg, parallel.dp, parallel.tp, parallel.ep)
        self.max_seq_len = max_seq_len
        self.hc_mult = cfg.hc_mult
        self.return_hidden = return_hidden
        # DeepSeek-V4.1 (docs/deepseek-v4.1.md): pipelined mHC with no learned head collapse, Engram, CSA-v2
        # sharing. Its DSpark drafter is built with with_dspark (with_mtp is off); dp / tp / ep shard it like V4.
        self.v41 = cfg.version == "v4.1"
        # a pipeline stage (parallel.pp > 1) builds only its layers; the others stay empty Cells so every layer keeps
        # its official name. The first stage embeds, the last holds the head and MTP / DSpark (and an embedding copy
        # for it). A V4.1 stage split passes only the streams and the FFN `pre` (parallel.v41_stage_starts).
        pp = parallel.pp if parallel is not None else 1
        stage = parallel.stage_layers(cfg.n_layers, cfg) if pp > 1 else range(cfg.n_layers)
        self.first_stage = pp == 1 or parallel.first_stage
        self.last_stage = pp == 1 or parallel.last_stage
        self.local_layers = tuple(stage)
        with_dspark = self.v41 and with_dspark and cfg.n_mtp_layers > 0
        self.with_dspark = with_dspark and self.last_stage
        if self.v41:
            with_mtp = False
            # the Engram layers this process holds (engram_rows of run_layers_v41 are theirs, in this order)
            self.engram_layers = tuple(i for i in cfg.engram_layer_ids if i in stage)
        self.with_mtp = with_mtp and cfg.n_mtp_layers > 0
        # whether the first and the last stage both hold the embedding (their gradients must be summed)
        self.shared_embed = pp > 1 and (self.with_mtp or with_dspark)
        if self.first_stage or (self.last_stage and (self.with_mtp or self.with_dspark)):
            self.embed = Embedding(cfg.vocab_size, cfg.dim, param_dtype)
        self.layers = nn.CellList([Block(i, cfg, param_dtype, moe_capacity_factor, parallel) if i in stage
                                   else nn.Cell() for i in range(cfg.n_layers)])
        if self.last_stage:
            self.norm = RMSNorm(cfg.dim, cfg.norm_eps, param_dtype)
            self.head = Linear(cfg.dim, cfg.vocab_size, param_dtype)
        if self.last_stage and not self.v41:
            self.hc_head_fn = _param((cfg.hc_mult, cfg.hc_mult * cfg.dim))
            self.hc_head_base = _param((cfg.hc_mult,))
            self.hc_head_scale = _param((1,))
            self.hc_head = HcHead(cfg)
        self.with_mtp = self.with_mtp and self.last_stage
        if self.with_mtp:
            self.mtp = nn.CellList([MTPBlock(cfg.n_layers + j, cfg, param_dtype, moe_capacity_factor, parallel)
                                     for j in range(cfg.n_mtp_layers)])
        ropes = RopeTables(cfg, max_seq_len)
        self.rope_plain, self.rope_yarn = ropes.plain, ropes.yarn
        if self.with_dspark:
            # DeepSeek-V4.1's DSpark drafter under its release names mtp.0..n-1, for training (dspark_forward) and
            # serving (dspark_draft); a block reaches dspark_block_size positions past the sequence
            self.mtp = nn.CellList([DSparkStage(k, cfg, param_dtype, moe_capacity_factor, parallel)
                                    for k in range(cfg.n_mtp_layers)])
            self.rope_dspark = RopeTables(cfg, max_seq_len + cfg.dspark_block_size).plain
        # one (cos, sin) pair per block, chosen by its ratio
        self.rope_cos = tuple(ropes.for_ratio(cfg.ratio(i))[0] for i in range(cfg.n_total_blocks))
        self.rope_sin = tuple(ropes.for_ratio(cfg.ratio(i))[1] for i in range(cfg.n_total_blocks))
        if index_keys not in ("own", "shipped"):
            raise ValueError(f"index_keys must be 'own' or 'shipped', got {index_keys!r}")
        self.index_keys = index_keys if self.v41 else "own"
        if self.index_keys == "shipped":
            for i in self.local_layers:
                self.layers[i].attn.shipped = True
        # the compression ratios in use (a cached step's per-ratio constants are in this order)
        self.ratios = tuple(sorted(set(r for r in cfg.compress_ratios if r)))

    def streams(self, input_ids, seg=None):
        """-> (embedding, final streams, per-block streams, per-block (affinity, expert ids, dropped))."""
        e, h = self.embed_streams(input_ids)
        h, hidden, routes = self.run_layers(h, input_ids, seg)
        return e, h, hidden, routes

    def embed_streams(self, input_ids):
        """-> (embedding [B, S, D], its hc_mult copies: the initial residual streams [B, S, hc, D])."""
        e = self.embed(input_ids)
        return e, ops.broadcast_to(ops.expand_dims(e, 2), e.shape[:2] + (self.hc_mult, e.shape[-1]))

    def run_layers(self, h, input_ids, seg=None):
        """This process's layers (all of them unless a pipeline stage) -> (streams, per-layer streams, routes)."""
        hidden = ()
        routes = ()
        for i in self.local_layers:
            h, aff, ids, dropped = self.layers[i](h, input_ids, self.rope_cos[i], self.rope_sin[i], seg, True)
            hidden = hidden + (h,)
            routes = routes + ((aff, ids, dropped),)
        return h, hidden, routes

    def logits(self, h):
        return self.hc_head(h, self.hc_head_fn, self.hc_head_scale, self.hc_head_base, self.norm, self.head.weight)

    def mtp_logits(self, h, input_ids, seg=None):
        """Depth-1 MTP: position t of the result predicts token t+2 from h_t and embed(ids[t+1])."""
        return self.mtp_forward(h, input_ids, seg)[0]

    def mtp_forward(self, h, input_ids, seg=None):
        """-> (MTP logits [B, S-1, V], affinities, expert ids, dropped) of the depth-1 MTP block."""
        S = input_ids.shape[1]
        blk = self.mtp[0]
        nxt = input_ids[:, 1:]
        mseg = None if seg is None else seg[:, :S - 1]
        x, aff, ids, dropped = blk.mtp_streams(h[:, :S - 1], self.embed(nxt), nxt, self.rope_cos[self.cfg.n_layers],
                                               self.rope_sin[self.cfg.n_layers], mseg)
        return self.mtp_head(x), aff, ids, dropped

    def mtp_head(self, x):
        blk = self.mtp[0]
        return self.hc_head(x, blk.hc_head_fn, blk.hc_head_scale, blk.hc_head_base, blk.norm, self.head.weight)

    # ---------------------------------------------------------------------------------------- cached steps
    def step_context(self, pos0, nvalid, T: int, max_len: int, slack: int = 0):
        """Per-step constants every layer shares, computed once per step. Row b processes T tokens at positions
        P[b] = pos0[b] + 0..T-1, of which the first nvalid[b] are real (the rest: padding, computed, never written).
        -> ctx = (P [B,T], last valid position [B], RoPE multipliers per table kind (plain, yarn) as (kv width,
        index width) x (rows, head-broadcast), window index lists [B,T,W], ring update plan, per compression ratio
        (visible entries [B,T], decode write plan), yarn tables for entry RoPE). slack: the cache's extra ring slots
        (the window ring has W + slack, a compressor state coff·r + slack; see the `step` tuple above)."""
        cfg = self.cfg
        B, W, hd, di = pos0.shape[0], cfg.window_size, cfg.head_dim, cfg.index_head_dim
        R = W + slack                                                 # window ring slots (position mod R)
        P = pos0.reshape(-1, 1) + ops.arange(T, dtype=ms.int32).reshape(1, T)
        last = pos0 + nvalid - 1
        (pc, ps), (yc, ys) = self.rope_plain, self.rope_yarn
        c0, s0 = table_at(pc, P), table_at(ps, P)
        c1, s1 = table_at(yc, P), table_at(ys, P)
        if T <= 2:              # decode: full-width multipliers (4 kernels per rotation)
            tabs = (full_width(c0, s0, hd) + full_width(c0, s0, di), full_width(c1, s1, hd) + full_width(c1, s1, di))
        else:                   # prefill chunks: RoPE-slice multipliers (fewer bytes per rotation)
            tabs = ((c0, s0, c0, s0), (c1, s1, c1, s1))
        e2 = ops.expand_dims                                                        # + head-broadcast versions
        tabs = ((tabs[0] + (e2(tabs[0][0], 2), e2(tabs[0][1], 2), e2(tabs[0][2], 2), e2(tabs[0][3], 2))),
                (tabs[1] + (e2(tabs[1][0], 2), e2(tabs[1][1], 2), e2(tabs[1][2], 2), e2(tabs[1][3], 2))))
        # window: indices into [ring (R slots + scratch) | step kv (T rows)] per query; -1 before position 0
        a = ops.expand_dims(P, -1) - (W - 1) + ops.arange(W, dtype=ms.int32).reshape(1, 1, W)
        local = a - pos0.reshape(-1, 1, 1)
        win = ops.where(a >= 0, ops.where(local >= 0, R + 1 + local, a % R), -ops.ones_like(a))
        # ring update: each slot keeps its latest valid position <= last
        s = ops.arange(R, dtype=ms.int32).reshape(1, R)
        active = (last >= pos0).reshape(-1, 1)
        if T == 1:              # one row per sequence: slot pos0 mod R, or the scratch row R when inactive
            slot = ops.where(active, (pos0 % R).reshape(-1, 1), ops.full_like(active, R, dtype=ms.int32))
            ring = (flat_rows(slot, R + 1), s)
        else:
            L = last.reshape(-1, 1)
            al = L - ((L - s) % R)
            ring = (ops.expand_dims(al >= pos0.reshape(-1, 1), -1), ops.clip(al - pos0.reshape(-1, 1), 0, T - 1))
        per_ratio = ()
        for r in self.ratios:
            vis = (P + 1) // r
            plan = ()
            if T == 1:
                # decode: the state slot of this token, the rows of the block it would end (and, overlap, the
                # block before), the entry row (scratch unless the token ends its block), the entry's RoPE
                p1 = (pos0 + 1).reshape(-1, 1)
                emit = ops.logical_and(p1 % r == 0, active)                                     # [B, 1]
                row = ops.where(emit, pos0.reshape(-1, 1) // r, ops.full_like(p1, max_len // r))
                bcol = ops.arange(B, dtype=ms.int32).reshape(B, 1)
                index = flat_rows(row, max_len // r + 1)                                         # [B]
                ce, se = table_at(yc, p1 - r).reshape(B, -1), table_at(ys, p1 - r).reshape(B, -1)
                rt = full_width(ce, se, hd) + full_width(ce, se, di)          # entry RoPE, both widths
                blk0 = (pos0 // r * r).reshape(-1, 1) + ops.arange(r, dtype=ms.int32).reshape(1, r)   # block tokens
                plans = ()
                for n_s in (2 * r + slack, r + slack):   # overlap layout (2r slots) / plain (r slots), + slack
                    slot = ops.where(active, (pos0 % n_s).reshape(-1, 1), ops.full_like(p1, n_s))
                    flat = bcol * (n_s + 1)
                    plans = plans + (((flat + slot).reshape(-1), (flat + blk0 % n_s).reshape(-1),
                                      (flat + (blk0 - r) % n_s).reshape(-1), index) + rt,)
                plan = plans
            per_ratio = per_ratio + ((vis, plan),)
        return P, last, tabs, win, ring, per_ratio, (yc, ys)

    def step_streams(self, input_ids, cache, ctx, step):
        """Cached step of the main layers: ids [B, T] -> final streams [B, T, hc, D]."""
        h = self.embed_streams(input_ids)[1]
        for i in self.local_layers:
            h = self.layers[i].forward_stats(h, input_ids, None, None, None, cache, ctx, step)[0]
        return h

    def mtp_step_streams(self, h_main, next_ids, cache, ctx, step):
        """Cached step of the depth-1 MTP block: (main streams h_t, token t+1) pairs -> its streams."""
        return self.mtp[0].mtp_streams(h_main, self.embed(next_ids), next_ids, None, None, None, cache, ctx,
                                       step)[0]

    # ---------------------------------------------------------------------------------------- DeepSeek-V4.1
    def run_layers_v41(self, h, input_ids, engram_rows, cache=None, ctx=None, step=None, stats=False,
                       targets=False, pre=None):
        """V4.1 blocks (this process's: all unless a pipeline stage) over the whole sequence (cache None) or a cached
        step -> (final streams, the last block's FFN pre, per-block streams), then with stats=True (full forward)
        per-block (affinities, expert ids, dropped), then with targets=True DSpark's target hidden states
        [B, S, targets·D] (the stream means of the dspark_target_layer_ids blocks' inputs, after their Engram).
        engram_rows: per Engram layer this process holds (self.engram_layers) its rows [B, S,
        columns·engram_head_dim], gathered on the host. pre: the FFN pre of the block before the first local one
        (a later pipeline stage; None: block 0's, one-hot on stream 0)."""
        B, S = input_ids.shape
        if pre is None:
            pre = ops.broadcast_to(Tensor(np.eye(1, self.hc_mult, dtype=np.float32)).reshape(1, 1, -1),
                                   (B, S, self.hc_mult))                          # block 0: stream 0
        alive = ops.ones((B, S), ms.float32)                                      # text only (vision refused)
        shared = (None, None, None, None, ())
        hidden = ()
        routes = ()
        tg = ()
        for i in self.local_layers:
            rows = engram_rows[self.engram_layers.index(i)] if i in self.engram_layers else None
            if targets and i in self.cfg.dspark_target_layer_ids:
                if rows is not None:
                    h, rows = self.layers[i].engram(h, rows, alive), None
                tg = tg + (precision.act(ops.mean(h, 2)),)
            if cache is None:     # through the Cell: what Cell.recompute acts on (train `recompute: true`)
                out = self.layers[i](h, input_ids, self.rope_cos[i], self.rope_sin[i], None, stats, pre, shared,
                                     rows, alive)
            else:
                out = self.layers[i].forward_v41(h, pre, input_ids, None, None, shared, rows, alive, cache, ctx,
                                                 step, stats)
            h, pre, shared = out[0], out[1], out[2]
            if stats:
                routes = routes + (out[3],)
            hidden = hidden + (h,)
        if cache is not None and self.index_keys == "shipped":     # the last publisher, for the next step
            pub = cache[step[5][1]]
            new = pub.reshape(B, 1)
            for s_id, _, emitted in shared[4]:
                new = ops.where(emitted.reshape(B, 1), ops.full_like(new, float(s_id)), new)
            ops.assign(pub, ops.depend(new, h))
        res = (h, pre, hidden)
        if stats:
            res = res + (routes,)
        if targets:
            res = res + (ops.concat(tg, -1),)
        return res

    def step_streams_v41(self, input_ids, engram_rows, cache, ctx, step, dspark=False):
        """V4.1 cached step of the main layers: ids [B, T] -> (final streams, the last block's FFN pre), and with
        dspark=True DSpark's main KV of these positions [stages, B, T, head_dim] (see dspark_main_kv)."""
        h = self.embed_streams(input_ids)[1]
        out = self.run_layers_v41(h, input_ids, engram_rows, cache, ctx, step, targets=dspark)
        if dspark:
            c0, s0 = table_at(self.rope_plain[0], ctx[0]), table_at(self.rope_plain[1], ctx[0])
            return out[0], out[1], self.dspark_main_kv(out[3], c0, s0)
        return out[0], out[1]

    def logits_v41(self, h, pre):
        """The last block's FFN pre collapses the streams (no hc_head in V4.1) -> norm -> head."""
        return self._vocab(self.norm(precision.act(hc_collapse(h, pre))))

    def _vocab(self, x):
        """The shared output head in float32 (the logits island): normed hidden [..., D] -> logits [..., V]."""
        return precision.island("logits", linear(ops.cast(x, ms.float32), ops.cast(self.head.weight, ms.float32)))

    # ------------------------------------------------------------------------------------- DSpark (V4.1)
    # One drafter for training (dspark_forward: every anchor of a sequence, teacher-forced) and serving
    # (dspark_draft: one block per row over the cached main-KV window); docs/deepseek-v4.1.md, "DSpark".
    def dspark_main_kv(self, hidden, cos, sin):
        """DSpark's window KV of the target: main_x = main_norm(main_proj(hidden [B, T, targets·D])), then each
        stage's kv_norm(wkv(main_x)) RoPE'd at its positions (cos/sin [B or 1, T, rope], the plain table)
        -> [K, B, T, hd]."""
        m = self.mtp[0]
        x = m.main_norm(m.main_proj(hidden))
        return ops.stack([blk.attn.dspark_kv(x, cos, sin) for blk in self.mtp])

    def dspark_blocks(self, first, ctx_kv, idx, cos, sin, stats=False):
        """The drafter stages over N blocks [first, noise x (bs - 1)] (first [N] int32, rows at the positions of
        cos/sin [N, bs, rope]); stage k attends ctx_kv[k] [N, W, hd] (its main-KV window) and the block rows as
        idx [N, bs, W + bs] says (Attention.forward_dspark). -> (collapsed hidden [N, bs, D], logits before the
        Markov bias [N, bs, V] float32, per-stage MoE stats when stats=True)."""
        c = self.cfg
        bs, N = c.dspark_block_size, first.shape[0]
        ids = ops.concat([first.reshape(N, 1), ops.full((N, bs - 1), c.dspark_noise_token_id, dtype=ms.int32)], 1)
        h = self.embed_streams(ids)[1]
        pre = ops.broadcast_to(Tensor(np.eye(1, self.hc_mult, dtype=np.float32)).reshape(1, 1, -1),
                               (N, bs, self.hc_mult))
        routes = ()
        for k in range(c.n_mtp_layers):
            out = self.mtp[k].forward_v41(h, pre, ids, cos, sin, (ctx_kv[k], idx), stats=stats)
            h, pre = out[0], out[1]
            if stats:
                routes = routes + (out[3],)
        last = self.mtp[c.n_mtp_layers - 1]
        x = precision.act(hc_collapse(h, pre))
        return x, self._vocab(last.norm(x)), routes

    def dspark_draft(self, y, ctx_kv, idx, cos, sin):
        """Serving: one DSpark block after the target produced y [B] (int32) for position p + 1: block ids [y,
        noise x (bs - 1)] at positions p+1 .. p+bs (cos/sin [B, bs, rope]) through the stages (ctx_kv
        [K, B, W, hd], idx [B, bs, W + bs]); each row's logits get the Markov head's bias of the token drafted for
        the row before it (greedy, row by row). -> (tokens [B, bs] int32, logits [B, bs, V], confidence [B, bs])."""
        bs = self.cfg.dspark_block_size
        last = self.mtp[self.cfg.n_mtp_layers - 1]
        x, base, _ = self.dspark_blocks(y, ctx_kv, idx, cos, sin)
        tok, toks, rows, embs = y, (), (), ()
        for i in range(bs):                      # sequential: row i's bias uses the token drafted for row i - 1
            e, bias = last.markov_head(tok)
            li = base[:, i] + bias
            tok = ops.cast(ops.argmax(li, -1), ms.int32)
            toks, rows, embs = toks + (tok,), rows + (li,), embs + (e,)
        return ops.stack(toks, 1), ops.stack(rows, 1), last.confidence_head(x, ops.stack(embs, 1))

    def dspark_forward(self, hidden, markov_ids):
        """Training forward of the DSpark drafter (docs/training.md, "DeepSeek-V4.1") at every anchor p = 0..S-1:
        the block [o_0, noise, ...] at positions p+1 .. p+bs runs the stages over the window of main_x up to p,
        as dspark_draft does for one anchor (NumpyV41.dspark_draft). hidden: run_layers_v41's target hidden states
        [B, S, targets·D] (targets=True); markov_ids [B, S, bs]: o_i, the token before each row (o_0 = the target's
        next token; teacher forcing) -> (logits [B, S, bs, V] with the Markov bias of o_i, confidence [B, S, bs]
        (raw), per-stage MoE stats)."""
        cfg = self.cfg
        B, S, bs = markov_ids.shape
        A, W = S, min(cfg.window_size, S)
        pc, ps = self.rope_dspark
        kv = self.dspark_main_kv(hidden, pc[:S].reshape(1, S, -1), ps[:S].reshape(1, S, -1))   # [K, B, S, hd]
        ring = np.arange(A)[:, None] - W + 1 + np.arange(W)[None, :]                      # window positions
        take = Tensor(np.clip(ring, 0, None).reshape(-1).astype(np.int32))
        ctx_kv = tuple(ops.gather(kv[k], take, 1).reshape(B * A, W, -1) for k in range(cfg.n_mtp_layers))
        idx = np.concatenate([np.where(ring >= 0, np.arange(W)[None, :], -1),
                              np.broadcast_to(W + np.arange(bs), (A, bs))], 1)             # [A, W + bs]
        idx = Tensor(np.broadcast_to(idx[None, :, None], (B, A, bs, W + bs)).reshape(B * A, bs, W + bs)
                     .astype(np.int32))
        posT = Tensor((np.arange(A)[:, None] + 1 + np.arange(bs)[None, :]).reshape(-1).astype(np.int32))
        cos = ops.tile(ops.gather(pc, posT, 0).reshape(1, A, bs, -1), (B, 1, 1, 1)).reshape(B * A, bs, -1)
        sin = ops.tile(ops.gather(ps, posT, 0).reshape(1, A, bs, -1), (B, 1, 1, 1)).reshape(B * A, bs, -1)
        x, logits, routes = self.dspark_blocks(markov_ids[:, :, 0].reshape(B * A), ctx_kv, idx, cos, sin, True)
        emb, bias = self.mtp[cfg.n_mtp_layers - 1].markov_head(markov_ids.reshape(B * A, bs))
        conf = precision.island("logits", self.mtp[cfg.n_mtp_layers - 1].confidence_head(x, emb))
        logits = precision.island("logits", logits + bias)
        return logits.reshape(B, S, bs, -1), conf.reshape(B, S, bs), routes

    def construct(self, input_ids, engram_rows=None):
        if self.v41:
            e, h = self.embed_streams(input_ids)
            h, pre, hidden = self.run_layers_v41(h, input_ids, engram_rows)
            logits = self.logits_v41(h, pre)
            if self.return_hidden:
                return logits, e, ops.stack(hidden)
            return logits
        e, h, hidden, _ = self.streams(input_ids)
        logits = self.logits(h)
        if self.return_hidden:
            if self.with_mtp and input_ids.shape[1] > 1:
                return logits, e, ops.stack(hidden), self.mtp_logits(h, input_ids)
            return logits, e, ops.stack(hidden)
        return logits
