"""The whole DeepSeek-V4 forward in float64 NumPy, built only from the op references (no MindSpore).

This is the golden the graph-mode model is checked against, position by position, in tests and in
`ascend-v4 dump --backend numpy`. It follows DeepSeek's reference control flow (prefill from position 0). The
indexer's Hadamard + FP4 q/k and the shared-expert clamp follow the config (`indexer_fp4`, `revision`) in every mode.
numerics="official" emulates the released CUDA kernels instead (BF16 activations, FP8/FP4 GEMMs with activation
quantisation, the sparse_attn kernel's BF16 probabilities, BF16 index scores, optional KV FP8): see
ascend_v4/numerics.py, docs/numerics.md and `ascend-v4 dump --mode official`.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from .config import ModelConfig
from .ops.attention import reference as attn_ref
from .ops.attention.reference import rms_norm
from .ops.attention.rope import apply_rope, layer_rope_table
from .ops.mhc import reference as mhc_ref
from .ops.moe import reference as moe_ref
from . import numerics as num


class NumpyV4:
    def __init__(self, cfg: ModelConfig, weights: Dict[str, np.ndarray], numerics: str = "exact",
                 kv_fp8: str = "gpu"):
        if numerics not in ("exact", "official"):
            raise ValueError(f"numerics must be 'exact' or 'official', got {numerics!r}")
        if kv_fp8 not in num.KV_FP8_MODES:
            raise ValueError(f"kv_fp8 must be one of {num.KV_FP8_MODES}, got {kv_fp8!r}")
        self.cfg = cfg
        self.official = numerics == "official"
        self.kv_fp8 = self.official and kv_fp8 == "spec"
        self.w = {k: (v if np.issubdtype(np.asarray(v).dtype, np.integer) else np.asarray(v, np.float64))
                  for k, v in weights.items()}
        self.fmt = {}
        if self.official:
            from .checkpoint.inventory import official_inventory
            self.fmt = {k: spec.fmt for k, spec in official_inventory(cfg).items()}

    def _lin(self, x, name):
        fmt = self.fmt.get(name)
        if fmt == "fp8" and not name.endswith("wo_a.weight"):    # wo_a ships FP8 but runs as a BF16 einsum
            return num.fp8_linear(x, self.w[name])
        if fmt == "fp4":
            return num.fp4_linear(x, self.w[name])
        return x @ self.w[name].T

    def _st(self, x):
        """A tensor the official model stores: BF16 in official mode (its activations are BF16 tensors between ops;
        docs/numerics.md), unchanged otherwise."""
        return num.bf16(x) if self.official else x

    def _kv_quant(self, kv):
        """KV FP8 fake-quant of the non-RoPE dims (block 64), only with kv_fp8='spec'."""
        if not self.kv_fp8:
            return kv
        nope = self.cfg.nope_head_dim
        kv = kv.copy()
        kv[..., :nope] = num.qdq_fp8(kv[..., :nope], 64)
        return kv

    def _tables(self, ratio, S):
        return layer_rope_table(self.cfg, ratio, S)

    def _compressor(self, p, x, ratio, cos, sin):
        c = self.cfg
        e = self._st(attn_ref.compress_kv(x, self.w[p + "wkv.weight"], self.w[p + "wgate.weight"], self.w[p + "ape"],
                                          self.w[p + "norm.weight"], ratio, ratio == 4, c.norm_eps,
                                          pooled=self._st))      # Compressor: kv.to(bf16) before its norm
        n = e.shape[1]
        return self._st(apply_rope(e, cos[:n * ratio:ratio][None], sin[:n * ratio:ratio][None]))

    def attention(self, p, x, layer_id):
        c = self.cfg
        B, S, _ = x.shape
        ratio = c.ratio(layer_id)
        cos, sin = self._tables(ratio, S)
        qr = self._st(rms_norm(self._lin(x, p + "wq_a.weight"), self.w[p + "q_norm.weight"], c.norm_eps))
        q = self._lin(qr, p + "wq_b.weight").reshape(B, S, c.n_heads, c.head_dim)
        q = num.bf16_rms(q, c.norm_eps) if self.official else rms_norm(q, None, c.norm_eps)
        q = self._st(apply_rope(q, cos[None, :, None], sin[None, :, None]))
        kv = self._st(rms_norm(self._lin(x, p + "wkv.weight"), self.w[p + "kv_norm.weight"], c.norm_eps))
        kv = self._kv_quant(self._st(apply_rope(kv, cos[None], sin[None])))
        win = np.broadcast_to(attn_ref.window_indices(S, c.window_size), (B, S, min(S, c.window_size)))
        cmp = None
        if ratio and S >= ratio:
            entries = self._kv_quant(self._compressor(p + "compressor.", x, ratio, cos, sin))
            if ratio == 4:
                ip = p + "indexer."
                qi = self._lin(qr, ip + "wq_b.weight").reshape(B, S, c.index_n_heads, c.index_head_dim)
                qi = self._st(apply_rope(qi, cos[None, :, None], sin[None, :, None]))
                ki = self._compressor(ip + "compressor.", x, ratio, cos, sin)
                wi = self._st(self._st(self._lin(x, ip + "weights_proj.weight"))
                              * (c.index_head_dim ** -0.5 * c.index_n_heads ** -0.5))
                if self.official:   # BF16 index scores, as the CUDA kernels, in torch.topk's order
                    cmp = num.index_list(qi, ki, wi, ratio, c.index_topk)
                else:               # the op owns the indexer numerics (Hadamard + FP4 q/k unless indexer_fp4 off)
                    cmp = attn_ref.lightning_indexer(qi, ki, wi, ratio, c.index_topk, fp4=c.indexer_fp4)
            else:
                cmp = np.broadcast_to(attn_ref.compressed_indices(S, ratio), (B, S, S // ratio))
            cmp = np.where(cmp >= 0, cmp + S, -1)
            kv = np.concatenate([kv, entries], axis=1)
        if self.official:   # the sparse_attn kernel: BF16 q/kv, BF16 probabilities before P·V
            win = num.valid_first(win)      # the official window list layout (its kernel blocks of 64)
            idx = win if cmp is None else np.concatenate([win, cmp], axis=-1)
            o = num.sparse_attn(num.bf16(q), num.bf16(kv), self.w[p + "attn_sink"], idx, c.head_dim ** -0.5)
        else:
            o = attn_ref.sparse_attention(q, kv, self.w[p + "attn_sink"], win, cmp, c.head_dim ** -0.5)
        o = self._st(apply_rope(o, cos[None, :, None], sin[None, :, None], inverse=True))
        o = o.reshape(B, S, c.o_groups, -1)
        wo_a = self.w[p + "wo_a.weight"].reshape(c.o_groups, c.o_lora_rank, -1)
        o = self._st(np.einsum("bsgd,grd->bsgr", o, wo_a).reshape(B, S, -1))
        return self._lin(o, p + "wo_b.weight")

    def moe(self, p, x, ids, layer_id):
        c = self.cfg
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        hash_layer = c.is_hash_layer(layer_id)
        weights, eids = moe_ref.moe_route(
            x, self.w[p + "gate.weight"], None if hash_layer else self.w[p + "gate.bias"], c.n_activated_experts,
            c.route_scale, c.score_func, input_ids=ids.reshape(-1) if hash_layer else None,
            tid2eid=self.w[p + "gate.tid2eid"] if hash_layer else None)
        y = np.zeros_like(x)
        for e in np.unique(eids):
            t, k = np.nonzero(eids == e)
            # the reference applies the routing weight before w2
            h = self._swiglu(x[t], f"{p}experts.{e}.") * weights[t, k, None]
            y[t] += self._lin(h, f"{p}experts.{e}.w2.weight")
        if c.n_shared_experts:
            sp = p + "shared_experts."
            y = y + self._lin(self._swiglu(x, sp, clamp=c.shared_expert_clamp), sp + "w2.weight")
        return self._st(y).reshape(shape)

    def _swiglu(self, x, p, clamp=True):
        lim = self.cfg.swiglu_limit if clamp else 0.0     # launch revision: shared expert unclamped
        return moe_ref.swiglu(self._lin(x, p + "w1.weight"), self._lin(x, p + "w3.weight"), lim)

    def block(self, p, h, ids, layer_id):
        c = self.cfg
        for sub, norm in (("attn", "attn_norm"), ("ffn", "ffn_norm")):
            x, post, comb = mhc_ref.hc_pre(h, self.w[f"{p}hc_{sub}_fn"], self.w[f"{p}hc_{sub}_scale"],
                                           self.w[f"{p}hc_{sub}_base"], c.hc_sinkhorn_iters, c.hc_eps, c.norm_eps)
            x = self._st(rms_norm(self._st(x), self.w[p + norm + ".weight"], c.norm_eps))
            f = self.attention(p + "attn.", x, layer_id) if sub == "attn" else self.moe(p + "ffn.", x, ids, layer_id)
            h = self._st(mhc_ref.hc_post(f, h, post, comb))      # the residual streams are BF16 too
        return h

    def head(self, h, prefix=""):
        c = self.cfg
        y = mhc_ref.hc_head(h, self.w[prefix + "hc_head_fn"], self.w[prefix + "hc_head_scale"],
                            self.w[prefix + "hc_head_base"], c.hc_eps, c.norm_eps)
        return self._st(rms_norm(self._st(y), self.w[prefix + "norm.weight"], c.norm_eps)) @ self.w["head.weight"].T

    def forward(self, ids: np.ndarray, with_mtp: bool = False) -> Dict[str, np.ndarray]:
        c = self.cfg
        e = self.w["embed.weight"][ids]
        h = np.repeat(e[:, :, None], c.hc_mult, axis=2)
        out = {"embed": e}
        for i in range(c.n_layers):
            h = self.block(f"layers.{i}.", h, ids, i)
            out[f"hidden_block{i}"] = h
        out["logits"] = self.head(h)
        if with_mtp and c.n_mtp_layers:
            p = "mtp.0."
            nxt = ids[:, 1:]
            en = self._st(rms_norm(self.w["embed.weight"][nxt], self.w[p + "enorm.weight"], c.norm_eps))
            hm = self._st(rms_norm(h[:, :-1], self.w[p + "hnorm.weight"], c.norm_eps))
            x = self._st(self._lin(en, p + "e_proj.weight")[:, :, None] + self._lin(hm, p + "h_proj.weight"))
            x = self.block(p, x, nxt, c.n_layers)
            out["mtp_logits"] = self.head(x, p)
        return out
