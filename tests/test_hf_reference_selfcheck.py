"""Self-checks of tests/hf_reference.py that do not involve our MindSpore model.

Every expected value here comes from the float64 NumPy code below, written from DeepSeek-V4's published design (docs/design.md)
(cross-read against DeepSeek's reference `inference/model.py`), never from transformers.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ascend_v4.config import load_config

try:  # `tests` is a namespace package when the repository root is on sys.path
    from tests import hf_reference as hr
except ImportError:  # pragma: no cover - run from inside tests/
    import hf_reference as hr

TINY = load_config("tiny")


# ================================================================================================
# float64 NumPy implementation of the spec
# ================================================================================================
def np_rms(x, w=None, eps=1e-6):
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y if w is None else y * w


def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_softplus(z):
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


def np_softmax(z, axis):
    z = z - np.max(z, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def np_freqs(cfg, ratio):
    """Reference `precompute_freqs_cis`: base 10000 without YaRN for ratio 0; compress_rope_theta with YaRN for compressed layers."""
    d = cfg.rope_head_dim
    i = np.arange(d // 2, dtype=np.float64)
    base = cfg.rope_theta if ratio == 0 else cfg.compress_rope_theta
    f = base ** (-2.0 * i / d)
    if ratio:
        def corr(r):
            return d * math.log(cfg.original_seq_len / (r * 2 * math.pi)) / (2 * math.log(base))
        low, high = max(math.floor(corr(cfg.beta_fast)), 0), min(math.ceil(corr(cfg.beta_slow)), d - 1)
        if low == high:
            high += 0.001
        t = np.clip((i - low) / (high - low), 0.0, 1.0)
        f = f / cfg.rope_factor * t + f * (1 - t)
    return f


def np_rope(x, pos, f, inverse=False):
    """Interleaved RoPE on the last 2*len(f) dims of x [S, ..., d]; pos [S]."""
    rd = 2 * len(f)
    ang = np.asarray(pos, dtype=np.float64)[:, None] * f[None, :]
    shape = (ang.shape[0],) + (1,) * (x.ndim - 2) + (ang.shape[1],)
    c, s = np.cos(ang).reshape(shape), np.sin(ang).reshape(shape)
    if inverse:
        s = -s
    y = x.copy()
    x0, x1 = x[..., -rd:][..., 0::2], x[..., -rd:][..., 1::2]
    r = np.empty_like(x[..., -rd:])
    r[..., 0::2] = x0 * c - x1 * s
    r[..., 1::2] = x0 * s + x1 * c
    y[..., -rd:] = r
    return y


def np_fp8_sim(x, block=64):
    """Reference act_quant(block, ue8m0, inplace): power-of-two scale, E4M3 round-to-nearest-even."""
    n = x.shape[-1]
    pad = (-n) % block
    xb = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)]).reshape(*x.shape[:-1], -1, block)
    amax = np.maximum(np.abs(xb).max(-1, keepdims=True), 1e-4)
    scale = 2.0 ** np.ceil(np.log2(amax / 448.0))
    y = np.clip(xb / scale, -448, 448)
    # E4M3: 3 mantissa bits; normal exponent >= -6, subnormal step 2^-9
    a = np.abs(y)
    e = np.floor(np.log2(np.maximum(a, 2.0 ** -6)))
    step = 2.0 ** (e - 3)
    q = np.sign(y) * np.round(a / step) * step          # np.round = half-to-even
    return (q * scale).reshape(*x.shape[:-1], -1)[..., :n]


def np_fp4_sim(x, block=32):
    n = x.shape[-1]
    pad = (-n) % block
    xb = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)]).reshape(*x.shape[:-1], -1, block)
    amax = np.maximum(np.abs(xb).max(-1, keepdims=True), 6.0 * 2.0 ** -126)
    scale = 2.0 ** np.ceil(np.log2(amax / 6.0))
    y = np.clip(xb / scale, -6, 6)
    a = np.abs(y)
    step = np.where(a < 2, 0.5, np.where(a < 4, 1.0, 2.0))   # E2M1: 0,.5,1,1.5 | 2,3 | 4,6
    q = np.sign(y) * np.round(a / step) * step
    return (q * scale).reshape(*x.shape[:-1], -1)[..., :n]


def np_hadamard(x):
    d = x.shape[-1]
    Hm = np.ones((1, 1))
    while Hm.shape[0] < d:
        Hm = np.block([[Hm, Hm], [Hm, -Hm]])
    return x @ Hm / math.sqrt(d)


def np_hc_pre(cfg, Hs, fn, scale, base):
    """Reference `hc_pre`: Hs [S, hc, D] -> (collapsed x [S, D], post [S, hc], comb [S, hc, hc])."""
    S, hc, D = Hs.shape
    v = Hs.reshape(S, hc * D)
    mix = (v @ fn.T) / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + cfg.norm_eps)
    pre = np_sigmoid(mix[:, :hc] * scale[0] + base[:hc]) + cfg.hc_eps
    post = 2 * np_sigmoid(mix[:, hc:2 * hc] * scale[1] + base[hc:2 * hc])
    c = (mix[:, 2 * hc:] * scale[2] + base[2 * hc:]).reshape(S, hc, hc)
    c = np_softmax(c, -1) + cfg.hc_eps
    c = c / (c.sum(-2, keepdims=True) + cfg.hc_eps)
    for _ in range(cfg.hc_sinkhorn_iters - 1):
        c = c / (c.sum(-1, keepdims=True) + cfg.hc_eps)
        c = c / (c.sum(-2, keepdims=True) + cfg.hc_eps)
    return (pre[:, :, None] * Hs).sum(1), post, c


def np_hc_post(x, R, post, comb):
    # stream k gathers column k of comb: H_new[k] = post[k]*x + sum_j comb[j,k] R[j]
    return post[:, :, None] * x[:, None, :] + np.einsum("sjk,sjd->skd", comb, R)


def np_hc_head(cfg, Hs, fn, scale, base):
    S, hc, D = Hs.shape
    v = Hs.reshape(S, hc * D)
    mix = (v @ fn.T) / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + cfg.norm_eps)
    pre = np_sigmoid(mix * scale[0] + base) + cfg.hc_eps
    return (pre[:, :, None] * Hs).sum(1)


def np_compress(cfg, x, wkv, wgate, ape, normw, ratio, f, rope=True):
    """Reference `Compressor`: one entry per complete block of `ratio` tokens, overlap iff ratio == 4."""
    S = x.shape[0]
    c = normw.shape[0]
    overlap = ratio == 4
    kv, sc = x @ wkv.T, x @ wgate.T
    n = S // ratio
    out = np.zeros((n, c))
    for i in range(n):
        V, Z = [], []
        for j in range(ratio):
            t = i * ratio + j
            if overlap:
                V.append(kv[t, c:]); Z.append(sc[t, c:] + ape[j, c:])          # "a" branch: current block
            else:
                V.append(kv[t]); Z.append(sc[t] + ape[j])
        if overlap and i > 0:
            for j in range(ratio):
                t = (i - 1) * ratio + j
                V.append(kv[t, :c]); Z.append(sc[t, :c] + ape[j, :c])          # "b" branch: previous block
        w = np_softmax(np.stack(Z), 0)
        out[i] = (w * np.stack(V)).sum(0)
    out = np_rms(out, normw, cfg.norm_eps)
    return np_rope(out, np.arange(n) * ratio, f) if rope else out


def np_stable_topk(scores, k):
    return np.argsort(-scores, kind="stable")[:k]


def np_indexer(cfg, W, p, x, qr, f, quant):
    """Reference `Indexer` (lightning indexer); returns per-query lists of selected compressed entries (−1 dropped)."""
    S = x.shape[0]
    nI, dI = cfg.index_n_heads, cfg.index_head_dim
    K = np_compress(cfg, x, W[f"{p}.attn.indexer.compressor.wkv.weight"], W[f"{p}.attn.indexer.compressor.wgate.weight"],
                    W[f"{p}.attn.indexer.compressor.ape"], W[f"{p}.attn.indexer.compressor.norm.weight"], 4, f)
    q = (qr @ W[f"{p}.attn.indexer.wq_b.weight"].T).reshape(S, nI, dI)
    q = np_rope(q, np.arange(S), f)
    if quant:
        q, K = np_fp4_sim(np_hadamard(q), 32), np_fp4_sim(np_hadamard(K), 32)
    w = (x @ W[f"{p}.attn.indexer.weights_proj.weight"].T) * dI ** -0.5 * nI ** -0.5
    I = (np.maximum(np.einsum("shd,td->sht", q, K), 0) * w[:, :, None]).sum(1)     # [S, T]
    T = K.shape[0]
    k = min(cfg.index_topk, T)
    sel = []
    for t in range(S):
        vis = (t + 1) // 4
        s = np.where(np.arange(T) < vis, I[t], -np.inf)
        picks = np_stable_topk(s, k) if T else np.zeros(0, int)
        sel.append(np.where(picks < vis, picks, -1))
    return sel


def np_attention(cfg, W, p, block_id, x, quant=False, probe=None):
    S = x.shape[0]
    H, hd, rd, eps = cfg.n_heads, cfg.head_dim, cfg.rope_head_dim, cfg.norm_eps
    ratio = cfg.compress_ratios[block_id]
    f = np_freqs(cfg, ratio)
    pos = np.arange(S)
    qr = np_rms(x @ W[f"{p}.attn.wq_a.weight"].T, W[f"{p}.attn.q_norm.weight"], eps)
    q = np_rms((qr @ W[f"{p}.attn.wq_b.weight"].T).reshape(S, H, hd), None, eps)       # per-head, no weight
    q = np_rope(q, pos, f)
    kv = np_rope(np_rms(x @ W[f"{p}.attn.wkv.weight"].T, W[f"{p}.attn.kv_norm.weight"], eps), pos, f)
    if quant:
        kv[:, :hd - rd] = np_fp8_sim(kv[:, :hd - rd], 64)
    C = np.zeros((0, hd))
    sel = [np.zeros(0, int)] * S
    if ratio:
        C = np_compress(cfg, x, W[f"{p}.attn.compressor.wkv.weight"], W[f"{p}.attn.compressor.wgate.weight"],
                        W[f"{p}.attn.compressor.ape"], W[f"{p}.attn.compressor.norm.weight"], ratio, f)
        if quant:
            C[:, :hd - rd] = np_fp8_sim(C[:, :hd - rd], 64)
        if ratio == 4:
            sel = np_indexer(cfg, W, p, x, qr, f, quant)
        else:
            sel = [np.arange((t + 1) // ratio) for t in range(S)]
    if probe is not None:
        probe["sel"] = sel
    o = np.zeros((S, H, hd))
    sink = W[f"{p}.attn.attn_sink"]
    for t in range(S):
        win = np.arange(max(0, t - cfg.window_size + 1), t + 1)                  # t-W+1 .. t
        picks = np.asarray(sel[t])
        Kt = np.concatenate([kv[win], C[picks[picks >= 0]]], 0)
        z = q[t] @ Kt.T * hd ** -0.5                                            # [H, n]
        m = np.maximum(z.max(-1), sink)
        e = np.exp(z - m[:, None])
        pr = e / (e.sum(-1) + np.exp(sink - m))[:, None]                        # sink only in the denominator
        o[t] = pr @ Kt
    o = np_rope(o, pos, f, inverse=True)                                         # conjugate rotation at the query
    G, R = cfg.o_groups, cfg.o_lora_rank
    wo_a = W[f"{p}.attn.wo_a.weight"].reshape(G, R, -1)
    z = np.einsum("sgi,gri->sgr", o.reshape(S, G, -1), wo_a).reshape(S, G * R)
    return z @ W[f"{p}.attn.wo_b.weight"].T


def np_expert(x, w1, w3, w2, lim, weight=None):
    g, u = x @ w1.T, x @ w3.T
    u, g = np.clip(u, -lim, lim), np.minimum(g, lim)
    h = g / (1 + np.exp(-g)) * u
    if weight is not None:
        h = h * weight[:, None]
    return h @ w2.T


def np_route(cfg, W, p, block_id, x, toks):
    s = np.sqrt(np_softplus(x @ W[f"{p}.ffn.gate.weight"].T))
    k = cfg.n_activated_experts
    if block_id < cfg.n_layers and cfg.is_hash_layer(block_id):
        idx = W[f"{p}.ffn.gate.tid2eid"][toks]
    else:
        biased = s + W[f"{p}.ffn.gate.bias"]
        idx = np.stack([np_stable_topk(b, k) for b in biased])
    w = np.take_along_axis(s, idx, 1)
    return idx, w / w.sum(-1, keepdims=True) * cfg.route_scale


def np_moe(cfg, W, p, block_id, x, toks):
    idx, w = np_route(cfg, W, p, block_id, x, toks)
    out = np.zeros_like(x)
    lim = cfg.swiglu_limit
    for e in np.unique(idx):
        rows, slot = np.nonzero(idx == e)
        out[rows] += np_expert(x[rows], W[f"{p}.ffn.experts.{e}.w1.weight"], W[f"{p}.ffn.experts.{e}.w3.weight"],
                               W[f"{p}.ffn.experts.{e}.w2.weight"], lim, w[rows, slot])
    return out + np_expert(x, W[f"{p}.ffn.shared_experts.w1.weight"], W[f"{p}.ffn.shared_experts.w3.weight"],
                           W[f"{p}.ffn.shared_experts.w2.weight"], lim)


def np_block(cfg, W, p, block_id, Hs, toks, quant=False):
    x, post, comb = np_hc_pre(cfg, Hs, W[f"{p}.hc_attn_fn"], W[f"{p}.hc_attn_scale"], W[f"{p}.hc_attn_base"])
    a = np_attention(cfg, W, p, block_id, np_rms(x, W[f"{p}.attn_norm.weight"], cfg.norm_eps), quant)
    Hs = np_hc_post(a, Hs, post, comb)
    x, post, comb = np_hc_pre(cfg, Hs, W[f"{p}.hc_ffn_fn"], W[f"{p}.hc_ffn_scale"], W[f"{p}.hc_ffn_base"])
    m = np_moe(cfg, W, p, block_id, np_rms(x, W[f"{p}.ffn_norm.weight"], cfg.norm_eps), toks)
    return np_hc_post(m, Hs, post, comb)


def np_forward(cfg, W, tokens, quant=False):
    """logits [B, S, V], final main streams [B, S, hc, D], MTP-0 logits (ids = tokens) [B, S, V]."""
    W = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in W.items()}
    logits, streams, mtp = [], [], []
    for toks in np.asarray(tokens):
        Hs = np.repeat(W["embed.weight"][toks][:, None, :], cfg.hc_mult, axis=1)
        for L in range(cfg.n_layers):
            Hs = np_block(cfg, W, f"layers.{L}", L, Hs, toks, quant)
        y = np_rms(np_hc_head(cfg, Hs, W["hc_head_fn"], W["hc_head_scale"], W["hc_head_base"]), W["norm.weight"],
                   cfg.norm_eps)
        logits.append(y @ W["head.weight"].T)
        streams.append(Hs)
        if cfg.n_mtp_layers:
            p = "mtp.0"
            e = np_rms(W["embed.weight"][toks], W[f"{p}.enorm.weight"], cfg.norm_eps)
            h = np_rms(Hs, W[f"{p}.hnorm.weight"], cfg.norm_eps)
            X = (e @ W[f"{p}.e_proj.weight"].T)[:, None, :] + h @ W[f"{p}.h_proj.weight"].T
            X = np_block(cfg, W, p, cfg.n_layers, X, toks, quant)
            y = np_rms(np_hc_head(cfg, X, W[f"{p}.hc_head_fn"], W[f"{p}.hc_head_scale"], W[f"{p}.hc_head_base"]),
                       W[f"{p}.norm.weight"], cfg.norm_eps)
            mtp.append(y @ W["head.weight"].T)
    return np.stack(logits), np.stack(streams), (np.stack(mtp) if mtp else None)


# ================================================================================================
# fixtures
# ================================================================================================
@pytest.fixture(scope="module")
def tiny_w():
    return hr.random_official_weights(TINY, seed=0)


@pytest.fixture(scope="module")
def tiny_ref(tiny_w):
    return hr.HFReference(TINY, tiny_w, deterministic_topk=True)


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(123).integers(0, TINY.vocab_size, size=(2, 64)).astype(np.int64)


@pytest.fixture(scope="module")
def np_out(tiny_w, tokens):
    return np_forward(TINY, tiny_w, tokens)


def _t(a):
    return torch.as_tensor(np.asarray(a), dtype=torch.float32)


# ================================================================================================
# mapping / completeness
# ================================================================================================
def test_inventory_has_every_kind_of_tensor(tiny_w):
    inv = hr.official_inventory(TINY)
    assert set(tiny_w) == set(inv)
    for needle in ("layers.0.ffn.gate.tid2eid", "layers.1.ffn.gate.bias", "layers.1.attn.indexer.compressor.ape",
                   "layers.2.attn.compressor.ape", "mtp.0.e_proj.weight", "mtp.0.hc_head_fn", "hc_head_scale"):
        assert needle in inv
    assert inv["layers.1.attn.compressor.wkv.weight"][0] == (2 * TINY.head_dim, TINY.dim)   # CSA: coff 2
    assert inv["layers.2.attn.compressor.ape"][0] == (16, TINY.head_dim)                    # HCA ratio 16
    assert "layers.2.attn.indexer.wq_b.weight" not in inv and "layers.0.attn.compressor.ape" not in inv


def test_every_tensor_consumed_and_every_param_set(tiny_w):
    model = hr.build_hf_model(TINY, tiny_w)
    sd = model.state_dict()
    conv = hr.convert_official_weights(TINY, tiny_w)
    assert set(conv) == set(sd)
    assert any(k.startswith("mtp.0.block.") for k in sd)
    # a missing official tensor is reported, even with the inventory check off (NaN poisoning / not-set check)
    w = dict(tiny_w)
    del w["layers.1.attn.indexer.compressor.ape"]
    with pytest.raises(KeyError):
        hr.build_hf_model(TINY, w)
    with pytest.raises(KeyError, match="not set"):
        hr.build_hf_model(TINY, w, require_complete=False)
    w = dict(tiny_w)
    del w["layers.3.ffn.experts.5.w3.weight"]
    with pytest.raises(KeyError):
        hr.build_hf_model(TINY, w, require_complete=False)
    # an unknown tensor is never silently dropped
    w = dict(tiny_w)
    w["layers.0.attn.mystery.weight"] = np.zeros(3, np.float32)
    with pytest.raises(KeyError):
        hr.build_hf_model(TINY, w, require_complete=False)


def test_expert_packing_and_plain_copies(tiny_w):
    model = hr.build_hf_model(TINY, tiny_w)
    ex = model.model.layers[3].mlp.experts
    I = TINY.moe_inter_dim
    for e in (0, 5):
        np.testing.assert_array_equal(ex.gate_up_proj[e, :I].numpy(), tiny_w[f"layers.3.ffn.experts.{e}.w1.weight"])
        np.testing.assert_array_equal(ex.gate_up_proj[e, I:].numpy(), tiny_w[f"layers.3.ffn.experts.{e}.w3.weight"])
        np.testing.assert_array_equal(ex.down_proj[e].numpy(), tiny_w[f"layers.3.ffn.experts.{e}.w2.weight"])
    np.testing.assert_array_equal(model.model.layers[1].self_attn.o_a_proj.weight.numpy(),
                                  tiny_w["layers.1.attn.wo_a.weight"])
    np.testing.assert_array_equal(model.mtp[0].block.mlp.gate.e_score_correction_bias.numpy(),
                                  tiny_w["mtp.0.ffn.gate.bias"])


def test_mapping_agrees_with_transformers_own_checkpoint_loader(tiny_w, tmp_path):
    """Save the official names to safetensors and let transformers' conversion_mapping load them."""
    from safetensors.numpy import save_file
    from transformers import DeepseekV4ForCausalLM

    hr.hf_config(TINY).save_pretrained(tmp_path)
    save_file({k: np.ascontiguousarray(v) for k, v in tiny_w.items()}, str(tmp_path / "model.safetensors"))
    with hr._quiet_transformers():
        theirs = DeepseekV4ForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).state_dict()
    ours = hr.build_hf_model(TINY, tiny_w).state_dict()
    main = [k for k in ours if not k.startswith("mtp.")]
    assert set(main) == set(theirs)
    for k in main:
        assert torch.equal(ours[k], theirs[k]), k


# ================================================================================================
# sub-computations vs NumPy
# ================================================================================================
def test_hc_pre_and_sinkhorn_one_token(tiny_ref, tiny_w):
    rng = np.random.default_rng(7)
    Hs = rng.standard_normal((1, 1, TINY.hc_mult, TINY.dim))
    p = "layers.2"
    x, post, comb = np_hc_pre(TINY, Hs[0], tiny_w[f"{p}.hc_ffn_fn"].astype(np.float64),
                              tiny_w[f"{p}.hc_ffn_scale"].astype(np.float64), tiny_w[f"{p}.hc_ffn_base"].astype(np.float64))
    with torch.no_grad():
        post_t, comb_t, x_t = tiny_ref.model.model.layers[2].ffn_hc(_t(Hs))
    np.testing.assert_allclose(post_t[0].numpy(), post, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(comb_t[0].numpy(), comb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x_t[0].numpy(), x, rtol=1e-5, atol=1e-5)
    # the NumPy Sinkhorn result is (close to) doubly stochastic and not symmetric -> the transpose matters
    assert np.allclose(comb[0].sum(0), 1, atol=1e-5) and np.allclose(comb[0].sum(1), 1, atol=1e-3)
    assert not np.allclose(comb[0], comb[0].T, atol=1e-3)


def test_hc_post_uses_transposed_comb(tiny_ref, tiny_w):
    """Whole decoder layer 0 (SWA + hash MoE) against NumPy: catches comb vs comb^T."""
    rng = np.random.default_rng(8)
    toks = rng.integers(0, TINY.vocab_size, (1, 24))
    Hs = rng.standard_normal((1, 24, TINY.hc_mult, TINY.dim))
    W = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in tiny_w.items()}
    want = np_block(TINY, W, "layers.0", 0, Hs[0], toks[0])
    model = tiny_ref.model
    pos = torch.arange(24)[None]
    e = _t(Hs[:, :, 0])
    from transformers.masking_utils import create_sliding_window_causal_mask
    mask = create_sliding_window_causal_mask(config=model.config, inputs_embeds=e, attention_mask=None, cache=None,
                                             position_ids=pos)
    pe = {k: model.model.rotary_emb(e, position_ids=pos, layer_type=k) for k in ("main", "compress")}
    with torch.no_grad():
        got = model.model.layers[0](_t(Hs), position_embeddings=pe, position_ids=pos, attention_mask=mask,
                                    input_ids=torch.as_tensor(toks), cache=None)
    np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-4, atol=1e-4)


def test_hc_head_collapse(tiny_ref, tiny_w):
    rng = np.random.default_rng(9)
    Hs = rng.standard_normal((1, 3, TINY.hc_mult, TINY.dim))
    want = np_hc_head(TINY, Hs[0], tiny_w["hc_head_fn"].astype(np.float64), tiny_w["hc_head_scale"].astype(np.float64),
                      tiny_w["hc_head_base"].astype(np.float64))
    with torch.no_grad():
        got = tiny_ref.model.model.hc_head(_t(Hs))
    np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-5, atol=1e-5)


def test_sqrtsoftplus_routing_one_token(tiny_ref, tiny_w):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((1, TINY.dim))
    W = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in tiny_w.items()}
    idx, w = np_route(TINY, W, "layers.3", 3, x, np.array([0]))
    with torch.no_grad():
        _, w_t, idx_t = tiny_ref.model.model.layers[3].mlp.gate(_t(x))
    o = np.argsort(idx_t[0].numpy())
    assert sorted(idx[0].tolist()) == idx_t[0].numpy()[o].tolist()
    np.testing.assert_allclose(w_t[0].numpy()[o], w[0][np.argsort(idx[0])], rtol=1e-5)
    assert abs(w.sum() - TINY.route_scale) < 1e-9
    # the bias only selects: force experts 0 and 1 with a dominant bias; weights stay normalised sqrt(softplus)
    gate = tiny_ref.model.model.layers[3].mlp.gate
    saved = gate.e_score_correction_bias.clone()
    try:
        with torch.no_grad():
            gate.e_score_correction_bias.copy_(torch.tensor([50.0, 40.0] + [0.0] * (TINY.n_routed_experts - 2)))
            _, wb_t, idxb_t = gate(_t(x))
    finally:
        with torch.no_grad():
            gate.e_score_correction_bias.copy_(saved)
    s = np.sqrt(np_softplus(x @ W["layers.3.ffn.gate.weight"].T))[0]
    o = np.argsort(idxb_t[0].numpy())
    assert idxb_t[0].numpy()[o].tolist() == [0, 1]
    np.testing.assert_allclose(wb_t[0].numpy()[o], s[:2] / s[:2].sum() * TINY.route_scale, rtol=1e-5)
    # hash layer: experts come from tid2eid, weights still from the gate
    tok = np.array([77])
    idx_h, w_h = np_route(TINY, W, "layers.0", 0, x, tok)
    with torch.no_grad():
        _, wh_t, idxh_t = tiny_ref.model.model.layers[0].mlp.gate(_t(x), torch.as_tensor(tok))
    assert idxh_t[0].tolist() == idx_h[0].tolist() == tiny_w["layers.0.ffn.gate.tid2eid"][77].tolist()
    np.testing.assert_allclose(wh_t[0].numpy(), w_h[0], rtol=1e-5)


def test_swiglu_clamp_on_routed_and_shared(tiny_ref, tiny_w):
    rng = np.random.default_rng(11)
    x = 40.0 * rng.standard_normal((5, TINY.dim))          # large enough that both clamps bite
    W = {k: v.astype(np.float64) for k, v in tiny_w.items() if v.dtype.kind == "f"}
    mlp = tiny_ref.model.model.layers[1].mlp
    want_sh = np_expert(x, W["layers.1.ffn.shared_experts.w1.weight"], W["layers.1.ffn.shared_experts.w3.weight"],
                        W["layers.1.ffn.shared_experts.w2.weight"], TINY.swiglu_limit)
    g = x @ W["layers.1.ffn.shared_experts.w1.weight"].T
    assert (g > TINY.swiglu_limit).any() and (np.abs(x @ W["layers.1.ffn.shared_experts.w3.weight"].T) > 10).any()
    with torch.no_grad():
        got_sh = mlp.shared_experts(_t(x)).numpy()
        idx = torch.tensor([[2, 6]] * 5)
        wts = torch.tensor([[0.7, 0.8]] * 5)
        got_r = mlp.experts(_t(x), idx, wts).numpy()
    np.testing.assert_allclose(got_sh, want_sh, rtol=1e-4, atol=1e-3)
    want_r = sum(np_expert(x, W[f"layers.1.ffn.experts.{e}.w1.weight"], W[f"layers.1.ffn.experts.{e}.w3.weight"],
                           W[f"layers.1.ffn.experts.{e}.w2.weight"], TINY.swiglu_limit, np.full(5, c))
                 for e, c in ((2, 0.7), (6, 0.8)))
    np.testing.assert_allclose(got_r, want_r, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("layer,which", [(1, "main"), (1, "indexer"), (2, "main")])
def test_compressor_blocks(tiny_ref, tiny_w, layer, which):
    """CSA overlap (main 2x32 and indexer 2x32 channels) and HCA ratio 16, incl. RoPE at position m*i."""
    rng = np.random.default_rng(12)
    S = 37                                                   # a partial trailing block must be dropped
    x = rng.standard_normal((1, S, TINY.dim))
    p = f"layers.{layer}"
    ratio = TINY.compress_ratios[layer]
    f = np_freqs(TINY, ratio)
    pre = f"{p}.attn.compressor" if which == "main" else f"{p}.attn.indexer.compressor"
    W = {k: v.astype(np.float64) for k, v in tiny_w.items() if k.startswith(pre)}
    want = np_compress(TINY, x[0], W[f"{pre}.wkv.weight"], W[f"{pre}.wgate.weight"], W[f"{pre}.ape"],
                       W[f"{pre}.norm.weight"], ratio, f)
    comp = tiny_ref.model.model.layers[layer].self_attn.compressor
    pos = torch.arange(S)[None]
    qr = torch.zeros(1, S, TINY.q_lora_rank)
    with torch.no_grad():
        if which == "main":
            kv, bias = comp(_t(x), qr, pos, None, layer)
            got = kv[0, 0].numpy()
        else:
            got_store = {}
            h = comp.indexer.scorer.register_forward_pre_hook(lambda m, a: got_store.__setitem__("k", a[1]))
            comp.indexer(_t(x), qr, pos, None, layer)
            h.remove()
            got = got_store["k"][0].numpy()
    assert got.shape == (S // ratio, want.shape[1])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    if which == "main" and ratio != 4:
        # HCA causality: entry i visible to query t iff i < floor((t+1)/ratio)
        vis = np.arange(S // ratio)[None, :] < ((np.arange(S) + 1) // ratio)[:, None]
        assert np.array_equal(np.isfinite(bias[0, 0].numpy()), vis)


def test_indexer_selection(tiny_ref, tiny_w, tokens):
    p, layer = "layers.3", 3
    probe = {}
    H = tiny_ref.hidden(tokens[:1])
    x = H[f"{p}.attn.x"][0].astype(np.float64)
    W = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in tiny_w.items()}
    np_attention(TINY, W, p, layer, x, probe=probe)
    got = H[f"{p}.attn.indexer.topk"][0]
    for t in range(x.shape[0]):
        assert sorted(got[t].tolist()) == sorted(np.asarray(probe["sel"][t]).tolist()), t
    assert (got == -1).any() and (got >= 0).any()


def test_attention_support_window_and_compressed(tiny_ref, tokens):
    """Which KV slots get non-zero probability: window t-W+1..t, HCA entries i<(t+1)//16, CSA = indexer picks."""
    model, W = tiny_ref.model, TINY.window_size
    got = {}
    hs = [model.model.layers[L].self_attn.register_forward_hook(lambda m, a, o, L=L: got.__setitem__(L, o[1]))
          for L in range(TINY.n_layers)]
    H = tiny_ref.hidden(tokens)
    for h in hs:
        h.remove()
    S = tokens.shape[1]
    for L in range(TINY.n_layers):
        pr = got[L].numpy()                                          # [B, H, S, S + T]
        sup = pr > 0
        for t in (0, 5, W - 1, W, 40, S - 1):
            win = np.zeros(S, bool)
            win[max(0, t - W + 1): t + 1] = True
            assert np.array_equal(sup[0, 0, t, :S], win), (L, t)
            ratio = TINY.compress_ratios[L]
            if ratio == 0:
                assert pr.shape[-1] == S
                continue
            T = pr.shape[-1] - S
            if ratio == 4:
                picks = H[f"layers.{L}.attn.indexer.topk"][0, t]
                want = np.isin(np.arange(T), picks[picks >= 0])
            else:
                want = np.arange(T) < (t + 1) // ratio
            assert np.array_equal(sup[0, 0, t, S:], want), (L, t)
        # sink: rows sum to < 1
        assert np.all(pr.sum(-1) < 1.0)


# ================================================================================================
# whole model
# ================================================================================================
def test_full_model_matches_numpy_spec(tiny_ref, tokens, np_out):
    want, _, want_mtp = np_out
    got = tiny_ref.logits(tokens)
    assert got.dtype == np.float32 and got.shape == (2, 64, TINY.vocab_size)
    # observed ~3e-6 on logits of magnitude ~4 (float32 transformers vs float64 NumPy)
    err = np.abs(got - want).max()
    assert err < 5e-5 * max(1.0, np.abs(want).max()), err
    got_mtp = tiny_ref.mtp_logits(tokens)
    assert np.abs(got_mtp - want_mtp).max() < 5e-5 * max(1.0, np.abs(want_mtp).max())
    # YaRN without the mscale attention factor on the compressed-layer table (reference: no m-scale)
    assert tiny_ref.model.model.rotary_emb.compress_attention_scaling == 1.0


def test_mtp_uses_given_streams(tiny_ref, tiny_w, tokens, np_out):
    _, streams, _ = np_out
    a = tiny_ref.mtp_logits(tokens, h_main=streams.astype(np.float32))
    b = tiny_ref.mtp_logits(tokens)
    assert np.abs(a - b).max() < 1e-3
    c = tiny_ref.mtp_logits(tokens, mtp_ids=np.roll(tokens, -1, axis=1))
    assert np.abs(c - b).max() > 1e-2
    # training pairing: h_t with token t+1, positions 0..S-2
    d = tiny_ref.mtp_logits(tokens, align="next")
    e = tiny_ref.mtp_logits(tokens[:, 1:], h_main=streams[:, :-1].astype(np.float32))
    assert d.shape == (2, 63, TINY.vocab_size) and np.abs(d - e).max() < 1e-3


def test_functional_api_determinism_and_hidden(tiny_w, tokens, tiny_ref):
    a = hr.hf_logits(TINY, tiny_w, tokens, deterministic_topk=True)
    b = hr.hf_logits(TINY, tiny_w, tokens, deterministic_topk=True)
    assert np.array_equal(a, b)
    assert np.array_equal(a, tiny_ref.logits(tokens))
    H = tiny_ref.hidden(tokens)
    assert np.array_equal(H["logits"], a)
    for L in range(TINY.n_layers - 1):
        assert np.array_equal(H[f"layers.{L}.out"], H[f"layers.{L + 1}.in"])
    assert H["layers.0.in"].shape == (2, 64, TINY.hc_mult, TINY.dim)
    np.testing.assert_array_equal(H["layers.0.in"][:, :, 2], H["embed"])
    assert H["layers.1.ffn.gate.indices"].shape == (128, TINY.n_activated_experts)


def test_causal_prefix_consistency(tiny_ref, tokens):
    """Logits of a prefix equal the first positions of the full run (needs the deterministic tie-break:
    torch.topk's choice among exactly tied indexer scores depends on the sequence length)."""
    full = tiny_ref.logits(tokens)
    for S in (17, 44):
        np.testing.assert_allclose(tiny_ref.logits(tokens[:, :S]), full[:, :S], rtol=1e-5, atol=1e-5)


# ================================================================================================
# spec fixes (quantisation simulations)
# ================================================================================================
def test_fake_quant_helpers_match_numpy():
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((6, 128)) * np.exp(rng.standard_normal((6, 1)) * 3)).astype(np.float32)
    x[0, :32] = 0.0
    x[0, :7] = [0.25, 0.75, 1.25, 2.5, 5.0, 6.0, -1.75]     # exact E2M1 ties (block amax 6 -> scale 1)
    np.testing.assert_array_equal(hr.fp8_fake_quant(torch.from_numpy(x), 64).numpy(),
                                  np_fp8_sim(x.astype(np.float64), 64).astype(np.float32))
    np.testing.assert_array_equal(hr.fp4_fake_quant(torch.from_numpy(x), 32).numpy(),
                                  np_fp4_sim(x.astype(np.float64), 32).astype(np.float32))
    assert hr.fp4_fake_quant(torch.from_numpy(x), 32).numpy()[0, :7].tolist() == [0.0, 1.0, 1.0, 2.0, 4.0, 6.0, -2.0]
    np.testing.assert_allclose(hr.hadamard(torch.from_numpy(x.astype(np.float64))).numpy(),
                               np_hadamard(x.astype(np.float64)), rtol=1e-12, atol=1e-12)


def test_spec_fixes_full_model(tiny_w, tokens):
    ref = hr.HFReference(TINY, tiny_w, spec_fixes=True, deterministic_topk=True)
    got = ref.logits(tokens[:1, :40])
    want, _, _ = np_forward(TINY, tiny_w, tokens[:1, :40], quant=True)
    plain = hr.HFReference(TINY, tiny_w, deterministic_topk=True).logits(tokens[:1, :40])
    # the fake-quant changes the model measurably ...
    assert np.abs(plain - want).max() > 1e-2
    # ... and transformers + hooks reproduces the NumPy spec (rounding-boundary flips allow a small slack)
    assert np.median(np.abs(got - want)) < 1e-5
    assert np.abs(got - want).max() < 1e-3
    with pytest.raises(ValueError):
        hr.build_hf_model(TINY, tiny_w, spec_fixes=["no_such_fix"])


def test_small_preset_runs():
    cfg = load_config("small")
    w = hr.random_official_weights(cfg, seed=1)
    toks = np.random.default_rng(2).integers(0, cfg.vocab_size, (1, 160)).astype(np.int64)
    lg = hr.hf_logits(cfg, w, toks)
    assert lg.shape == (1, 160, cfg.vocab_size) and np.isfinite(lg).all()


def test_flash_geometry_inventory_and_mapping_on_meta():
    """Real V4-Flash geometry without allocating it: the published checkpoint's shapes, and every official name lands on a
    transformers parameter of the matching (packed) shape, covering all of them."""
    from transformers import DeepseekV4ForCausalLM

    cfg = load_config("v4-flash")
    inv = hr.official_inventory(cfg)
    flash_shapes = {   # shapes of the published V4-Flash checkpoint
        "layers.0.hc_attn_fn": (24, 16384), "layers.5.attn.wq_b.weight": (32768, 1024),
        "layers.5.attn.wo_a.weight": (8192, 4096), "layers.5.attn.wo_b.weight": (4096, 8192),
        "layers.2.attn.compressor.wkv.weight": (1024, 4096), "layers.2.attn.compressor.ape": (4, 1024),
        "layers.2.attn.indexer.wq_b.weight": (8192, 1024), "layers.2.attn.indexer.weights_proj.weight": (64, 4096),
        "layers.2.attn.indexer.compressor.wkv.weight": (256, 4096), "layers.2.attn.indexer.compressor.ape": (4, 256),
        "layers.2.attn.indexer.compressor.norm.weight": (128,), "layers.3.attn.compressor.ape": (128, 512),
        "layers.3.attn.compressor.wgate.weight": (512, 4096), "layers.1.ffn.gate.tid2eid": (129280, 6),
        "layers.3.ffn.gate.bias": (256,), "layers.9.ffn.experts.255.w2.weight": (4096, 2048),
        "mtp.0.e_proj.weight": (4096, 4096), "mtp.0.hc_head_fn": (4, 16384), "mtp.0.ffn.gate.bias": (256,),
    }
    for k, shape in flash_shapes.items():
        assert inv[k][0] == shape, k
    assert "mtp.0.attn.compressor.ape" not in inv and "layers.0.attn.compressor.ape" not in inv
    assert "layers.42.attn.indexer.wq_b.weight" in inv and "layers.41.attn.indexer.wq_b.weight" not in inv
    with torch.device("meta"), hr._quiet_transformers():
        model = DeepseekV4ForCausalLM(hr.hf_config(cfg))
        model.mtp = torch.nn.ModuleList([hr.HFMTPBlock(hr.hf_config(cfg, include_mtp_layers=True), cfg.n_layers)])
    sd = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    seen = set()
    for name, (shape, _) in inv.items():
        hf_name, ew = hr.map_official_name(name)
        seen.add(hf_name)
        if ew is None:
            assert sd[hf_name] == shape, name
        elif ew[1] == "w2":
            assert sd[hf_name] == (cfg.n_routed_experts, *shape), name
        else:
            assert sd[hf_name] == (cfg.n_routed_experts, 2 * shape[0], shape[1]), name
    assert seen == set(sd)
