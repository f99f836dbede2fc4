"""DeepSeek-V4 as MindSpore Cells: one module per concept of the spec, parameters named as in the release.

    embed -> 4 identical streams -> n_layers x Block(mHC[attn], mHC[MoE]) -> hc_head -> norm -> head

Every custom computation goes through `ascend_v4.ops` (hc_pre/hc_post/hc_head, moe_route/moe_dispatch/
expert_ffn/moe_combine, compress_kv/lightning_indexer/sparse_attention); each Cell resolves its backends
once at construction, so graph mode compiles whichever backend the registry chose for the device.
On CPU the parameters are float32 (the reference backend); on Ascend pass param_dtype=ms.bfloat16 and the
same Cells run in bf16, with mHC, router, compressor pooling and softmax kept in float32 like the reference.
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
from .ops.attention.composite import apply_rope, compressed_indices, window_indices
from .ops.attention.rope import rope_table
from .ops.common import linear, rms_norm
from .ops.moe.layer import MoeExperts


def _param(shape, dtype=ms.float32, init="zeros", requires_grad=True):
    return Parameter(initializer(init, tuple(shape), dtype), requires_grad=requires_grad)


class Linear(nn.Cell):
    """y = x·Wᵀ (no bias in V4). Weight [out, in], stored in param_dtype."""

    def __init__(self, in_features: int, out_features: int, dtype=ms.float32):
        super().__init__()
        self.weight = _param((out_features, in_features), dtype)

    def construct(self, x):
        return linear(x, ops.cast(self.weight, x.dtype))


class RMSNorm(nn.Cell):
    def __init__(self, dim: int, eps: float, dtype=ms.float32):
        super().__init__()
        self.eps = eps
        self.weight = _param((dim,), dtype, "ones")

    def construct(self, x):
        return rms_norm(x, ops.cast(self.weight, ms.float32), self.eps)


class Embedding(nn.Cell):
    def __init__(self, vocab: int, dim: int, dtype=ms.float32):
        super().__init__()
        self.weight = _param((vocab, dim), dtype)

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


class RopeTables:
    """cos/sin constants [max_seq_len, rope_dim/2]: base 10000 without YaRN for SWA layers and MTP,
    compress_rope_theta with YaRN for compressed layers (spec §4.1)."""

    def __init__(self, cfg: ModelConfig, max_seq_len: int):
        plain = rope_table(max_seq_len, cfg.rope_head_dim, cfg.rope_theta)
        yarn = rope_table(max_seq_len, cfg.rope_head_dim, cfg.compress_rope_theta, cfg.original_seq_len,
                          cfg.rope_factor, cfg.beta_fast, cfg.beta_slow)
        self.plain = tuple(Tensor(t.astype(np.float32)) for t in plain)
        self.yarn = tuple(Tensor(t.astype(np.float32)) for t in yarn)

    def for_ratio(self, ratio: int):
        return self.yarn if ratio else self.plain


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
    RoPE at the block's first position (spec §4.2)."""

    def __init__(self, cfg: ModelConfig, ratio: int, head_dim: int, dtype=ms.float32):
        super().__init__()
        self.ratio = ratio
        self.overlap = ratio == 4
        coff = 2 if self.overlap else 1
        self.eps = cfg.norm_eps
        self.wkv = Linear(cfg.dim, coff * head_dim, dtype)
        self.wgate = Linear(cfg.dim, coff * head_dim, dtype)
        self.ape = _param((ratio, coff * head_dim))
        self.norm = RMSNorm(head_dim, cfg.norm_eps, dtype)
        self._compress = v4ops.resolve("compress_kv").fn

    def construct(self, x, cos, sin):
        n = x.shape[1] // self.ratio
        c = self._compress(x, self.wkv.weight, self.wgate.weight, self.ape, self.norm.weight, self.ratio,
                           self.overlap, self.eps)
        return apply_rope(c, cos[:n * self.ratio:self.ratio].reshape(1, n, -1),
                          sin[:n * self.ratio:self.ratio].reshape(1, n, -1))


class Indexer(nn.Cell):
    """Lightning indexer of CSA layers: scores compressed entries with Σ_h w·ReLU(q·k), keeps the top-k."""

    def __init__(self, cfg: ModelConfig, ratio: int, dtype=ms.float32):
        super().__init__()
        self.n_heads, self.head_dim, self.topk, self.ratio = cfg.index_n_heads, cfg.index_head_dim, cfg.index_topk, ratio
        self.wq_b = Linear(cfg.q_lora_rank, cfg.index_n_heads * cfg.index_head_dim, dtype)
        self.weights_proj = Linear(cfg.dim, cfg.index_n_heads, dtype)
        self.compressor = Compressor(cfg, ratio, cfg.index_head_dim, dtype)
        self.weight_scale = float(cfg.index_head_dim ** -0.5 * cfg.index_n_heads ** -0.5)
        self._indexer = v4ops.resolve("lightning_indexer").fn

    def construct(self, x, qr, cos, sin):
        B, S = x.shape[0], x.shape[1]
        q = self.wq_b(qr).reshape(B, S, self.n_heads, self.head_dim)
        q = apply_rope(q, cos[:S].reshape(1, S, 1, -1), sin[:S].reshape(1, S, 1, -1))
        k = self.compressor(x, cos, sin)
        # Hadamard rotation of q and k is orthogonal, so without FP4 simulation it leaves q·k unchanged.
        w = self.weights_proj(x) * self.weight_scale
        return self._indexer(q, k, w, self.ratio, self.topk)


class Attention(nn.Cell):
    """Shared-KV MQA over a 128-token window plus compressed entries (CSA: indexer top-k, HCA: all visible),
    attention sink, inverse RoPE on the output and the grouped low-rank output projection (spec §4).

    Tensor parallel (`parallel.tp` > 1): this rank holds n_heads/tp query heads (wq_b rows, attn_sink) and
    o_groups/tp output groups (wo_a rows, wo_b columns); the shared KV head, compressor and indexer are replicated.
    The query latent and the KV rows enter the head-split region through CopyToTensorParallel, and wo_b's partial
    sums leave it through ReduceFromTensorParallel."""

    def __init__(self, layer_id: int, cfg: ModelConfig, dtype=ms.float32, parallel=None):
        super().__init__()
        tp = parallel.tp if parallel is not None else 1
        self.tp = tp
        self.n_heads, self.head_dim, self.rope_dim = cfg.n_heads // tp, cfg.head_dim, cfg.rope_head_dim
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
        if tp > 1:
            from .parallel import CopyToTensorParallel, ReduceFromTensorParallel
            self.tp_in_q = CopyToTensorParallel(parallel)
            self.tp_in_kv = CopyToTensorParallel(parallel)
            self.tp_out = ReduceFromTensorParallel(parallel)
        self.has_indexer = self.ratio == 4
        if self.ratio:
            self.compressor = Compressor(cfg, self.ratio, cfg.head_dim, dtype)
        if self.has_indexer:
            self.indexer = Indexer(cfg, self.ratio, dtype)
        self._attend = v4ops.resolve("sparse_attention").fn
        self._attend_hca = v4ops.resolve("hca_attention").fn

    def construct(self, x, cos, sin, seg=None):
        """seg: optional [B, S] document ids of a packed row; queries then see only their own document."""
        B, S = x.shape[0], x.shape[1]
        cs, sn = cos[:S].reshape(1, S, 1, -1), sin[:S].reshape(1, S, 1, -1)
        qr = self.q_norm(self.wq_a(x))
        q = self.wq_b(self.tp_in_q(qr) if self.tp > 1 else qr).reshape(B, S, self.n_heads, self.head_dim)
        q = q * ops.rsqrt(ops.mean(q * q, -1, True) + self.eps)        # per-head norm, no weight
        q = apply_rope(q, cs, sn)
        kv = apply_rope(self.kv_norm(self.wkv(x)), cos[:S].reshape(1, S, -1), sin[:S].reshape(1, S, -1))
        win_idx = ops.broadcast_to(ops.expand_dims(window_indices(S, self.window), 0), (B, S, min(S, self.window)))
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
            return self._output(o, cs, sn, B, S)
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
        return self._output(o, cs, sn, B, S)

    def _output(self, o, cs, sn, B, S):
        o = apply_rope(o, cs, sn, True)                                    # back to relative position
        # grouped low-rank output: per group g, [B*S, heads/g*hd] x wo_a[g]ᵀ -> [B*S, r]
        o = o.reshape(B * S, self.n_groups, -1).swapaxes(0, 1)
        wo_a = ops.cast(self.wo_a.weight, o.dtype).reshape(self.n_groups, self.o_lora_rank, -1)
        o = ops.bmm(o, wo_a.swapaxes(1, 2)).swapaxes(0, 1).reshape(B, S, -1)
        if self.tp > 1:
            return self.tp_out(self.wo_b(o))
        return self.wo_b(o)


# --------------------------------------------------------------------------------------------------- MoE
class Gate(nn.Cell):
    def __init__(self, layer_id: int, cfg: ModelConfig, dtype=ms.float32):
        super().__init__()
        self.hash = cfg.is_hash_layer(layer_id)
        self.topk, self.route_scale, self.score_func = cfg.n_activated_experts, cfg.route_scale, cfg.score_func
        self.weight = _param((cfg.n_routed_experts, cfg.dim), dtype)
        if self.hash:
            self.tid2eid = _param((cfg.vocab_size, cfg.n_activated_experts), ms.int32, requires_grad=False)
        else:
            # aux-loss-free balancing: moved by the load statistics outside the gradient
            self.bias = _param((cfg.n_routed_experts,), requires_grad=False)
        self._route = v4ops.resolve("moe_route").fn

    def affinity(self, x):
        logits = linear(ops.cast(x, ms.float32), ops.cast(self.weight, ms.float32))
        if self.score_func == "softmax":
            return ops.softmax(logits, -1)
        if self.score_func == "sigmoid":
            return ops.sigmoid(logits)
        return ops.sqrt(ops.softplus(logits))

    def construct(self, x, input_ids):
        if self.hash:
            return self._route(x, self.weight, None, self.topk, self.route_scale, self.score_func,
                               input_ids, self.tid2eid)
        return self._route(x, self.weight, self.bias, self.topk, self.route_scale, self.score_func)


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
    """1 shared + n_routed experts, top-k routed (spec §5), through ops/moe/layer.py's MoeExperts:
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
        self.n_experts, self.limit = cfg.n_routed_experts, float(cfg.swiglu_limit)
        self.capacity_factor = capacity_factor
        self.gate = Gate(layer_id, cfg, dtype)
        inter = cfg.moe_inter_dim // tp
        if ep > 1:
            self.experts = ExpertList({e: Expert(cfg.dim, inter, dtype)
                                       for e in parallel.local_experts(cfg.n_routed_experts)})
        else:
            self.experts = nn.CellList([Expert(cfg.dim, inter, dtype) for _ in range(cfg.n_routed_experts)])
        self.has_shared = cfg.n_shared_experts > 0
        if self.has_shared:
            self.shared_experts = Expert(cfg.dim, inter, dtype)
        if ep > 1 and parallel.simulated:
            from .parallel import SimulatedExpertParallel
            self.routed = SimulatedExpertParallel(cfg.n_routed_experts, cfg.swiglu_limit, ep, parallel.ep_rank,
                                                  capacity_factor)
        elif ep > 1:
            from .ops.moe.parallel import ExpertParallelMoeExperts
            self.routed = ExpertParallelMoeExperts(cfg.n_routed_experts, cfg.swiglu_limit, ep, parallel.ep_rank,
                                                   group=parallel.group("ep"), capacity_factor=capacity_factor)
        else:
            self.routed = MoeExperts(cfg.n_routed_experts, cfg.swiglu_limit, capacity_factor=capacity_factor)
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
        s = self.shared_experts
        return self._ffn(ops.expand_dims(x, 0), ops.expand_dims(ops.cast(s.w1.weight, x.dtype), 0),
                         ops.expand_dims(ops.cast(s.w2.weight, x.dtype), 0),
                         ops.expand_dims(ops.cast(s.w3.weight, x.dtype), 0), self.limit)[0]

    def construct(self, x, input_ids):
        return self.forward_stats(x, input_ids)[0]

    def forward_stats(self, x, input_ids):
        """-> (y, affinities s [T, E] before bias, selected expert ids [T, k], dropped assignments (int32)): what
        the balance loss, the aux-loss-free bias update and the overflow report need. Graph mode prunes the
        extras when the caller drops them."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, ids = self.gate(x, input_ids)
        w1, w2, w3 = self._stacked(x.dtype)
        xe, we = x, weights
        if self.tp > 1:
            xe, we = self.tp_in_x(x), self.tp_in_w(weights)
        shared = self._shared(xe) if self.has_shared else None
        y, dropped = self.routed(xe, we, ids, w1, w2, w3, shared)
        if self.tp > 1:
            y = self.tp_out(y)
        return ops.cast(y, x.dtype).reshape(shape), self.gate.affinity(x), ids, dropped


# ----------------------------------------------------------------------------------------- blocks & model
class Block(nn.Cell):
    """Two mHC-wrapped sublayers: attention then MoE. The residual path is entirely comb (spec §2-3)."""

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

    def construct(self, h, input_ids, cos, sin, seg=None):
        return self.forward_stats(h, input_ids, cos, sin, seg)[0]

    def forward_stats(self, h, input_ids, cos, sin, seg=None):
        """-> (streams, router affinities [T, E], expert ids [T, k], dropped expert assignments)."""
        x, post, comb = self._hc_pre(h, self.hc_attn_fn, self.hc_attn_scale, self.hc_attn_base,
                                     self.iters, self.hc_eps, self.norm_eps)
        h = self._hc_post(self.attn(self.attn_norm(x), cos, sin, seg), h, post, comb)
        x, post, comb = self._hc_pre(h, self.hc_ffn_fn, self.hc_ffn_scale, self.hc_ffn_base,
                                     self.iters, self.hc_eps, self.norm_eps)
        f, aff, ids, dropped = self.ffn.forward_stats(self.ffn_norm(x), input_ids)
        return self._hc_post(f, h, post, comb), aff, ids, dropped


class HcHead(nn.Cell):
    """Collapse the streams with sigmoid weights, RMSNorm, project to the vocabulary."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.hc_eps, self.norm_eps = cfg.hc_eps, cfg.norm_eps
        self._hc_head = v4ops.resolve("hc_head").fn

    def construct(self, h, fn, scale, base, norm, head_w):
        y = self._hc_head(h, fn, scale, base, self.hc_eps, self.norm_eps)
        return linear(ops.cast(norm(y), ms.float32), ops.cast(head_w, ms.float32))


class MTPBlock(Block):
    """Multi-token prediction: a full (SWA-only, non-hash) block fed with enorm(embed(next ids)) and
    hnorm(main streams); shares the main model's embedding and head (spec §6)."""

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

    def mtp_streams(self, h_main, e_next, input_ids, cos, sin, seg=None):
        x = ops.expand_dims(self.e_proj(self.enorm(e_next)), 2) + self.h_proj(self.hnorm(h_main))
        return Block.forward_stats(self, x, input_ids, cos, sin, seg)


class Transformer(nn.Cell):
    """The whole DeepSeek-V4 model. construct(ids [B,S]) -> logits [B,S,V] for every position; with
    `return_hidden=True` also the embedding and each block's 4-stream output (the dump/compare points).

    parallel: an ascend_v4.parallel.ParallelContext (tensor / expert parallel training) or None (everything on
    this process). Parameters keep their official names and hold this rank's slice (see ascend_v4/parallel.py)."""

    def __init__(self, cfg: ModelConfig, max_seq_len: int = 4096, param_dtype=None,
                 return_hidden: bool = False, with_mtp: bool = True, moe_capacity_factor: Optional[float] = None,
                 parallel=None):
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
        # a pipeline stage (parallel.pp > 1) builds only its layers; the others stay empty Cells so every layer keeps
        # its official name. The first stage embeds, the last holds the head and MTP (and an embedding copy for it).
        pp = parallel.pp if parallel is not None else 1
        stage = parallel.stage_layers(cfg.n_layers) if pp > 1 else range(cfg.n_layers)
        self.first_stage = pp == 1 or parallel.first_stage
        self.last_stage = pp == 1 or parallel.last_stage
        self.local_layers = tuple(stage)
        self.with_mtp = with_mtp and cfg.n_mtp_layers > 0
        # whether the first and the last stage both hold the embedding (their gradients must be summed)
        self.shared_embed = pp > 1 and self.with_mtp
        if self.first_stage or (self.last_stage and self.with_mtp):
            self.embed = Embedding(cfg.vocab_size, cfg.dim, param_dtype)
        self.layers = nn.CellList([Block(i, cfg, param_dtype, moe_capacity_factor, parallel) if i in stage
                                   else nn.Cell() for i in range(cfg.n_layers)])
        if self.last_stage:
            self.norm = RMSNorm(cfg.dim, cfg.norm_eps, param_dtype)
            self.head = Linear(cfg.dim, cfg.vocab_size, param_dtype)
            self.hc_head_fn = _param((cfg.hc_mult, cfg.hc_mult * cfg.dim))
            self.hc_head_base = _param((cfg.hc_mult,))
            self.hc_head_scale = _param((1,))
            self.hc_head = HcHead(cfg)
        self.with_mtp = self.with_mtp and self.last_stage
        if self.with_mtp:
            self.mtp = nn.CellList([MTPBlock(cfg.n_layers + j, cfg, param_dtype, moe_capacity_factor, parallel)
                                     for j in range(cfg.n_mtp_layers)])
        ropes = RopeTables(cfg, max_seq_len)
        # one (cos, sin) pair per block, chosen by its ratio
        self.rope_cos = tuple(ropes.for_ratio(cfg.ratio(i))[0] for i in range(cfg.n_total_blocks))
        self.rope_sin = tuple(ropes.for_ratio(cfg.ratio(i))[1] for i in range(cfg.n_total_blocks))

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
            h, aff, ids, dropped = self.layers[i].forward_stats(h, input_ids, self.rope_cos[i], self.rope_sin[i], seg)
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
        return self.hc_head(x, blk.hc_head_fn, blk.hc_head_scale, blk.hc_head_base, blk.norm,
                            self.head.weight), aff, ids, dropped

    def construct(self, input_ids):
        e, h, hidden, _ = self.streams(input_ids)
        logits = self.logits(h)
        if self.return_hidden:
            if self.with_mtp and input_ids.shape[1] > 1:
                return logits, e, ops.stack(hidden), self.mtp_logits(h, input_ids)
            return logits, e, ops.stack(hidden)
        return logits
