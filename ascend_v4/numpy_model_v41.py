"""The whole DeepSeek-V4.1 text forward in float64 NumPy, built only from the op references (no MindSpore).

The golden the V4.1 graph-mode model, serving engine and op families are checked against. One code path for
prefill, chunked prefill and decode: a call continues the sequences held in a `V41State` from its position, so
`forward(ids[:, :s])` then `forward(ids[:, s:s+1], state)` … equals one `forward(ids)` (decode == recompute).
Control flow and layer roles follow DeepSeek's V4.1 `inference/model.py`; the contract is docs/deepseek-v4.1.md
("Float64 golden"). Numerics are exact float64 except the indexer's FP4 QDQ of index q/k (config `indexer_fp4`,
what the checkpoint was trained with); `kv_quant=True` adds the reference's cache QDQs (window KV FP8 E4M3 1×32
with power-of-two scales on all dims, compressed KV FP4 with E4M3 scales per 16). BF16 activations and the
FP8/FP4 GEMMs' activation quantisation are not emulated.

`index_keys="own"` (default) makes every index source score against its own group's owner's key cache (the fix);
`index_keys="shipped"` reproduces DeepSeek's released code, where a decode step in which a ratio-2 source emits no
group scores against whichever source last published keys (docs/deepseek-v4.1.md, "Decode index keys").
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import numpy as np

from .checkpoint.formats import act_quant_fp4_e4m3, act_quant_fp8
from .config import ModelConfigV41
from .ops.attention import reference as attn_ref
from .ops.attention.reference import rms_norm
from .ops.attention.rope import apply_rope, layer_rope_table
from .ops.engram import reference as engram_ref
from .ops.mhc import reference as mhc_ref
from .ops.moe import reference as moe_ref

INDEX_KEY_MODES = ("own", "shipped")


class V41State:
    """What a V4.1 forward carries from one call to the next, for a batch of sequences at the same position.

    Plain arrays (float64 / int64), growing with the sequence — a golden keeps everything it may need:
    `kv[i]` every window KV vector of layer i (RoPE'd), `cmp[i]` / `keys[i]` the compressed KV rows (RoPE'd) and
    index keys of kv source i, `comp[i]` its compressor (kv_state, score_state), `hash` the Engram n-gram state,
    `index_k_slot` the last layer that published index keys (used only by index_keys='shipped'), `dspark_kv[k]`
    DSpark stage k's window KV of main_x (filled by NumpyV41.dspark_observe)."""

    def __init__(self, cfg: ModelConfigV41, batch: int, token_map: Optional[np.ndarray] = None):
        self.pos = 0
        self.batch = batch
        hd = cfg.head_dim
        self.kv: Dict[int, np.ndarray] = {i: np.zeros((batch, 0, hd)) for i in range(cfg.n_layers)}
        self.cmp: Dict[int, np.ndarray] = {}
        self.keys: Dict[int, np.ndarray] = {}
        self.comp: Dict[int, tuple] = {}
        for s in cfg.kv_source_layers:
            self.cmp[s] = np.zeros((batch, 0, hd))
            self.keys[s] = np.zeros((batch, 0, cfg.index_head_dim))
            self.comp[s] = attn_ref.compressor_state(batch, cfg.ratio(s), hd, False)
        self.hash = engram_ref.NgramHashState.for_config(cfg, batch, token_map) if cfg.engram_layer_ids else None
        self.index_k_slot: Optional[int] = None
        self.dspark_kv: Dict[int, np.ndarray] = {k: np.zeros((batch, 0, hd)) for k in range(cfg.n_mtp_layers)}


class NumpyV41:
    """DeepSeek-V4.1 golden. `params`: float64 (or float32) arrays under the release's tensor names, quantised
    tensors already dequantised (`x.weight` only, no `x.scale`); `token_map`: the Engram compressed-token map
    (int [len(tokenizer)]), None when ids are already compressed ids."""

    def __init__(self, cfg: ModelConfigV41, params: Mapping[str, np.ndarray], token_map: Optional[np.ndarray] = None,
                 index_keys: str = "own", kv_quant: bool = False):
        if getattr(cfg, "version", "v4") != "v4.1":
            raise ValueError(f"NumpyV41 runs DeepSeek-V4.1 configs; '{cfg.name}' is {getattr(cfg, 'version', 'v4')}")
        if index_keys not in INDEX_KEY_MODES:
            raise ValueError(f"index_keys must be one of {INDEX_KEY_MODES}, got {index_keys!r}")
        self.cfg = cfg
        self.shipped = index_keys == "shipped"
        self.kv_quant = bool(kv_quant)
        self.token_map = token_map
        self.w = {k: np.asarray(v, np.float64) for k, v in params.items()}

    def new_state(self, batch: int) -> V41State:
        return V41State(self.cfg, batch, self.token_map)

    # ----------------------------------------------------------------------------------------- pieces -----
    def _lin(self, x, name):
        return x @ self.w[name].T

    def _index_fp4(self, x):
        return attn_ref.fp4_act_quant(x).astype(np.float64) if self.cfg.indexer_fp4 else x

    def _rope(self, ratio, end):
        return layer_rope_table(self.cfg, ratio, end)

    def attention(self, i, x, st: V41State, shared: dict):
        """Layer i's attention on x [B, S, D] (attn_norm output) for positions st.pos .. st.pos+S−1."""
        c, p = self.cfg, f"layers.{i}.attn."
        B, S, _ = x.shape
        s0, end = st.pos, st.pos + S
        ratio = c.ratio(i)
        cos, sin = self._rope(ratio, end)
        tc, ts = cos[s0:end], sin[s0:end]
        qr = rms_norm(self._lin(x, p + "wq_a.weight"), self.w[p + "q_norm.weight"], c.norm_eps)
        q = self._lin(qr, p + "wq_b.weight").reshape(B, S, c.n_heads, c.head_dim)
        q = apply_rope(q, tc[None, :, None], ts[None, :, None])             # no per-head RMS rescale in V4.1
        st.kv[i] = np.concatenate([st.kv[i], self._window_kv(p, x, tc, ts)], axis=1)   # FP8 QDQ with kv_quant
        rows = st.kv[i]                                                      # rows 0..end−1 = positions
        win = np.broadcast_to(attn_ref.window_indices(S, c.window_size, s0), (B, S, min(end, c.window_size)))
        cmp = None
        if ratio:
            src = c.kv_source(i)
            n = end // ratio
            if i == src:
                self._compress(i, x, st, cos, sin, shared)
            if i == c.index_source(i):
                shared["topk", i] = self._index(i, qr, x, st, cos, sin, shared) if n else np.zeros((B, S, 0), np.int32)
            idx = shared["topk", i] = shared["topk", c.index_source(i)]
            cmp = np.where(idx >= 0, idx + end, -1)
            rows = np.concatenate([rows, st.cmp[src][:, :n]], axis=1)
        o = attn_ref.sparse_attention(q, rows, self.w[p + "attn_sink"], win, cmp, c.head_dim ** -0.5)
        shared["attn_out", i] = out = self._out_proj(p, o, tc, ts)
        return out

    def _compress(self, i, x, st, cos, sin, shared):
        """kv source i: new group latents -> index keys (from the un-rotated latent), then RoPE'd KV rows."""
        c, p = self.cfg, f"layers.{i}.attn."
        ratio = c.ratio(i)
        kvs, scs = st.comp[i]
        lat, kvs, scs = attn_ref.compress_kv_v2_step(
            x, self.w[p + "compressor.wkv.weight"], self.w.get(p + "compressor.wgate.weight"),
            self.w[p + "compressor.norm.weight"], kvs, scs, st.pos, ratio, c.norm_eps)
        st.comp[i] = (kvs, scs)
        n_new = lat.shape[1]
        if not n_new:
            return
        j0 = st.cmp[i].shape[1]
        gp = (j0 + np.arange(n_new)) * ratio                                 # group j stands for token j·ratio
        gc, gs = cos[gp][None], sin[gp][None]
        k = rms_norm(lat @ self.w[p + "indexer.wk.weight"].T, self.w[p + "indexer.k_norm.weight"], c.norm_eps)
        st.keys[i] = np.concatenate([st.keys[i], self._index_fp4(apply_rope(k, gc, gs))], axis=1)
        st.index_k_slot = i                                                  # published only when it emitted
        lat = apply_rope(lat, gc, gs)
        if self.kv_quant:                                                    # after the indexer used the latent
            lat = act_quant_fp4_e4m3(lat, 16).astype(np.float64)
        st.cmp[i] = np.concatenate([st.cmp[i], lat], axis=1)

    def _index(self, i, qr, x, st, cos, sin, shared):
        c, p = self.cfg, f"layers.{i}.attn.indexer."
        B, S, _ = x.shape
        ratio, end = c.ratio(i), st.pos + S
        n = end // ratio
        owner = st.index_k_slot if self.shipped else c.kv_source(i)
        keys = st.keys[owner][:, :n]
        q = self._lin(qr, p + "wq_b.weight").reshape(B, S, c.index_n_heads, c.index_head_dim)
        q = self._index_fp4(apply_rope(q, cos[st.pos:end][None, :, None], sin[st.pos:end][None, :, None]))
        w = self._lin(x, p + "weights_proj.weight") * (c.index_head_dim ** -0.5 * c.index_n_heads ** -0.5)
        cs = c.candidate_source_layer
        cand = shared.get("candidates") if 0 <= cs < i else None
        ids, I = attn_ref.index_topk_v2(q, keys, w, ratio, c.index_topk, st.pos, cand)
        shared["index_scores", i] = I
        if i == cs:
            shared["candidates"] = attn_ref.candidate_mask(I, attn_ref.visible_count(S, ratio, st.pos),
                                                           c.candidate_topk_blocks, c.candidate_block_size)
        return ids

    def moe(self, p, x, image_mask, n_activated):
        c = self.cfg
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        bias = self.w[p + "gate.bias"]
        if image_mask is not None and p + "gate.bias_vl" in self.w:
            bias = np.where(image_mask.reshape(-1, 1), self.w[p + "gate.bias_vl"][None], bias[None])
        weights, eids = moe_ref.moe_route(x, self.w[p + "gate.weight"], bias, n_activated, c.route_scale,
                                          c.score_func, gate_temp=c.gate_temp, eps=1e-20)
        y = np.zeros_like(x)
        for e in np.unique(eids):
            t, k = np.nonzero(eids == e)
            h = self._swiglu(x[t], f"{p}experts.{e}.") * weights[t, k, None]    # routing weight before w2
            y[t] += self._lin(h, f"{p}experts.{e}.w2.weight")
        if c.n_shared_experts:
            sp = p + "shared_experts."
            y = y + self._lin(self._swiglu(x, sp), sp + "w2.weight")         # V4.1 clamps the shared expert too
        return y.reshape(shape)

    def _swiglu(self, x, p):
        return moe_ref.swiglu(self._lin(x, p + "w1.weight"), self._lin(x, p + "w3.weight"), self.cfg.swiglu_limit)

    def engram(self, i, h, rows, alive):
        """Engram before block i: h [B, S, hc, D], rows [B, S, columns] global table rows."""
        p = f"layers.{i}.engram."
        e = engram_ref.engram_lookup(self.w[p + "embed.weight"], rows)
        kv = self._lin(e, p + "wkv.weight")
        return engram_ref.engram_gate(h, kv, self.w[p + "q_weight"], self.w[p + "k_weight"], alive, self.cfg.norm_eps)

    def block(self, i, h, pre_in, st, shared, image_mask):
        """Backbone block i (see _mhc_block)."""
        return self._mhc_block(f"layers.{i}.", i, h, pre_in, lambda x: self.attention(i, x, st, shared), shared,
                               image_mask, self.cfg.n_activated_experts)

    def _mhc_block(self, p, key, h, pre_in, attn, shared, image_mask, n_activated):
        """Pipelined mHC: attention collapses with the incoming pre (the previous block's ffn pre), the FFN with
        this block's attention pre; post/comb stay with the sublayer that computed them. -> (h, ffn pre)."""
        c = self.cfg
        mix = dict(iters=c.hc_sinkhorn_iters, hc_eps=c.hc_eps, norm_eps=c.norm_eps)
        a_pre, a_post, a_comb = mhc_ref.hc_mixes(h, self.w[p + "hc_attn_fn"], self.w[p + "hc_attn_scale"],
                                                 self.w[p + "hc_attn_base"], **mix)
        shared["attn_in", key] = x = mhc_ref.hc_collapse(h, pre_in)
        h = mhc_ref.hc_post(attn(rms_norm(x, self.w[p + "attn_norm.weight"], c.norm_eps)), h, a_post, a_comb)
        shared["post_attn", key] = h
        f_pre, f_post, f_comb = mhc_ref.hc_mixes(h, self.w[p + "hc_ffn_fn"], self.w[p + "hc_ffn_scale"],
                                                 self.w[p + "hc_ffn_base"], **mix)
        shared["ffn_in", key] = x = mhc_ref.hc_collapse(h, a_pre)
        x = rms_norm(x, self.w[p + "ffn_norm.weight"], c.norm_eps)
        h = mhc_ref.hc_post(self.moe(p + "ffn.", x, image_mask, n_activated), h, f_post, f_comb)
        return h, f_pre

    # ------------------------------------------------------------------------------------------ DSpark -----
    def _out_proj(self, p, o, pos_c, pos_s):
        c = self.cfg
        B, S = o.shape[:2]
        o = apply_rope(o, pos_c[None, :, None], pos_s[None, :, None], inverse=True).reshape(B, S, c.o_groups, -1)
        wo_a = self.w[p + "wo_a.weight"].reshape(c.o_groups, c.o_lora_rank, -1)
        return self._lin(np.einsum("bsgd,grd->bsgr", o, wo_a).reshape(B, S, -1), p + "wo_b.weight")

    def _window_kv(self, p, x, cos, sin):
        kv = apply_rope(rms_norm(self._lin(x, p + "wkv.weight"), self.w[p + "kv_norm.weight"], self.cfg.norm_eps),
                        cos[None], sin[None])
        return act_quant_fp8(kv, 32).astype(np.float64) if self.kv_quant else kv

    def dspark_observe(self, out: Dict[str, np.ndarray], st: V41State) -> None:
        """After a target forward: each DSpark stage's window KV of main_x = main_norm(main_proj(dspark_hidden))
        for the positions that forward covered (the reference seeds its rings in prefill and writes slot p on
        every decode step; both are this)."""
        c = self.cfg
        hid = out["dspark_hidden"]
        S = hid.shape[1]
        p0 = st.pos - S
        if st.dspark_kv[0].shape[1] != p0:
            raise ValueError(f"DSpark state covers {st.dspark_kv[0].shape[1]} positions; this output starts at {p0}: "
                             f"observe every target forward in order")
        main_x = rms_norm(self._lin(hid, "mtp.0.main_proj.weight"), self.w["mtp.0.main_norm.weight"], c.norm_eps)
        cos, sin = self._rope(0, st.pos)
        for k in range(c.n_mtp_layers):
            kv = self._window_kv(f"mtp.{k}.attn.", main_x, cos[p0:], sin[p0:])
            st.dspark_kv[k] = np.concatenate([st.dspark_kv[k], kv], axis=1)

    def dspark_draft(self, y: np.ndarray, st: V41State) -> Dict[str, np.ndarray]:
        """One DSpark block after the target produced token y [B] at position p = st.pos − 1 (dspark_observe'd).

        Block ids [y, noise × (block_size − 1)] at positions p+1 … p+block_size run through the stages: each
        attends its window of main_x KV (positions ≤ p, the last window_size) plus all block positions
        (bidirectional). Then logits = head(norm(Σ pre·H)) per row, the Markov head adds embed[o_i]·headᵀ to row i
        with o_0 = y and o_{i+1} = argmax(row i) (greedy), and confidence_i = proj·[hidden_i ‖ embed[o_i]] (no
        sigmoid). Returns tokens [B, bs] (o_1 …), logits [B, bs, V] (biased), base_logits (without the Markov
        bias), hidden [B, bs, D] (the un-normed collapsed state) and confidence [B, bs]. The state does not move."""
        c = self.cfg
        bs, L, hc = c.dspark_block_size, c.n_layers, c.hc_mult
        y = np.asarray(y, np.int64).reshape(-1)
        B, p = y.shape[0], st.pos - 1
        if p < 0 or st.dspark_kv[0].shape[1] != st.pos:
            raise ValueError("dspark_draft needs a target forward and its dspark_observe first")
        ids = np.concatenate([y[:, None], np.full((B, bs - 1), c.dspark_noise_token_id, np.int64)], axis=1)
        h = np.repeat(self.w["embed.weight"][ids][:, :, None], hc, axis=2)
        pre = np.zeros((B, bs, hc))
        pre[..., 0] = 1.0
        cos, sin = self._rope(0, p + 1 + bs)
        bc, bsn = cos[p + 1:], sin[p + 1:]
        n_ctx = min(p + 1, c.window_size)
        idx = np.concatenate([np.arange(p + 1 - n_ctx, p + 1), p + 1 + np.arange(bs)])
        idx = np.broadcast_to(idx, (B, bs, idx.size)).astype(np.int32)
        shared: dict = {}
        for k in range(c.n_mtp_layers):
            pa = f"mtp.{k}.attn."

            def attn(x, pa=pa, k=k):
                qr = rms_norm(self._lin(x, pa + "wq_a.weight"), self.w[pa + "q_norm.weight"], c.norm_eps)
                q = apply_rope(self._lin(qr, pa + "wq_b.weight").reshape(B, bs, c.n_heads, c.head_dim),
                               bc[None, :, None], bsn[None, :, None])
                rows = np.concatenate([st.dspark_kv[k], self._window_kv(pa, x, bc, bsn)], axis=1)
                o = attn_ref.sparse_attention(q, rows, self.w[pa + "attn_sink"], idx, None, c.head_dim ** -0.5)
                return self._out_proj(pa, o, bc, bsn)
            h, pre = self._mhc_block(f"mtp.{k}.", L + k, h, pre, attn, shared, None, c.dspark_n_activated_experts)
        last = f"mtp.{c.n_mtp_layers - 1}."
        hidden = mhc_ref.hc_collapse(h, pre)
        base = rms_norm(hidden, self.w[last + "norm.weight"], c.norm_eps) @ self.w["head.weight"].T
        logits = base.copy()
        tok = np.zeros((B, bs + 1), np.int64)
        tok[:, 0] = y
        emb = np.zeros((B, bs, c.dspark_markov_rank))
        for i in range(bs):                                   # sequential: row i's bias uses the sampled o_i
            emb[:, i] = self.w[last + "markov_head.embed.weight"][tok[:, i]]
            logits[:, i] += emb[:, i] @ self.w[last + "markov_head.head.weight"].T
            tok[:, i + 1] = np.argmax(logits[:, i], axis=-1)
        conf = np.concatenate([hidden, emb], axis=-1) @ self.w[last + "confidence_head.proj.weight"][0]
        return {"tokens": tok[:, 1:], "logits": logits, "base_logits": base, "hidden": hidden, "confidence": conf}

    # ----------------------------------------------------------------------------------------- forward ----
    def forward(self, ids: np.ndarray, state: Optional[V41State] = None,
                text_mask: Optional[np.ndarray] = None, trace: bool = False) -> Dict[str, np.ndarray]:
        """ids [B, S] raw token ids for positions state.pos .. state.pos+S−1 (a fresh state: prefill from 0).

        text_mask [B, S] bool (None: all text): False marks image-span positions — dead for Engram, `bias_vl`
        in the routers. Returns embed [B, S, D], hidden_block{i} [B, S, hc, D] (block i's output streams),
        dspark_hidden [B, S, len(targets)·D] (stream means of the DSpark target layers' inputs) and logits
        [B, S, vocab] for every position. The state advances by S.
        trace=True adds the intermediates other backends are checked against: engram_rows{i} [B, S, columns]
        (hash rows, offsets added) and engram_out{i} [B, S, hc, D] (block i's input after Engram); topk{i}
        [B, S, k] (compressed ids each ratio>0 layer attends, −1 = none; a consumer's equals its source's),
        index_scores{i} [B, S, ⌊end/ratio⌋] (an index source's scores, −inf where not visible),
        candidates [B, S, ⌊end/ratio⌋] (the level-1 mask), and the mHC intermediates of block i: attn_in{i} /
        ffn_in{i} [B, S, D] (the collapsed sublayer inputs, before their norms), attn_out{i} [B, S, D] (the attention
        output after wo_b) and post_attn{i} [B, S, hc, D]."""
        c = self.cfg
        ids = np.asarray(ids, np.int64)
        B, S = ids.shape
        st = self.new_state(B) if state is None else state
        if st.batch != B:
            raise ValueError(f"state holds {st.batch} sequences, ids have {B}")
        image_mask = None if text_mask is None else ~np.asarray(text_mask, bool)
        rows = st.hash(ids, text_mask) if st.hash is not None else None
        alive = np.ones((B, S)) if text_mask is None else np.asarray(text_mask, np.float64)
        e = self.w["embed.weight"][ids]
        h = np.repeat(e[:, :, None], c.hc_mult, axis=2)
        pre = np.zeros((B, S, c.hc_mult))
        pre[..., 0] = 1.0                                                    # block 0 collapses stream 0
        out = {"embed": e}
        shared: dict = {}                                                    # per-forward hand-offs
        targets: List[np.ndarray] = []
        for i in range(c.n_layers):
            if i in c.engram_layer_ids:
                r = rows[:, :, c.engram_layer_ids.index(i)]
                h = self.engram(i, h, r, alive)
                if trace:
                    out[f"engram_rows{i}"], out[f"engram_out{i}"] = r, h
            if i in c.dspark_target_layer_ids:
                targets.append(h.mean(axis=2))
            h, pre = self.block(i, h, pre, st, shared, image_mask)
            out[f"hidden_block{i}"] = h
        y = rms_norm(mhc_ref.hc_collapse(h, pre), self.w["norm.weight"], c.norm_eps)
        out["logits"] = y @ self.w["head.weight"].T
        if targets:
            out["dspark_hidden"] = np.concatenate(targets, axis=-1)
        if trace:
            for key, v in shared.items():
                out[key if isinstance(key, str) else f"{key[0]}{key[1]}"] = v
        st.pos += S
        return out


def forward_v41(cfg: ModelConfigV41, params: Mapping[str, np.ndarray], ids: np.ndarray,
                token_map: Optional[np.ndarray] = None, index_keys: str = "own", kv_quant: bool = False
                ) -> Dict[str, np.ndarray]:
    """One-shot prefill of ids [B, S] from position 0 (see NumpyV41.forward)."""
    return NumpyV41(cfg, params, token_map, index_keys, kv_quant).forward(ids)
