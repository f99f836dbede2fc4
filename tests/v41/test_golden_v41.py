"""The float64 DeepSeek-V4.1 golden (ascend_v4/numpy_model_v41.py) on v4.1-tiny: Engram rows and gated read
against a hand derivation, decode/chunked prefill == one-shot recompute, every CSA-v2 reuse rule, the two-level
indexer against a loop re-derivation, and the shipped decode index-key behaviour behind its flag."""
import math

import numpy as np
import pytest

from ascend_v4.checkpoint.release_v41 import random_weights_v41
from ascend_v4.config import V41_PRESETS
from ascend_v4.numpy_model_v41 import NumpyV41, forward_v41
from ascend_v4.ops.attention.reference import candidate_mask

from .engram_hand import hand_rows

CFG = V41_PRESETS["v4.1-tiny"].validate()
S = 23


@pytest.fixture(scope="module")
def weights():
    return {k: v.astype(np.float64) for k, v in random_weights_v41(CFG, seed=3).items()}


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(7).integers(0, CFG.engram_compressed_vocab_size, (2, S))


@pytest.fixture(scope="module")
def full(weights, ids):
    return NumpyV41(CFG, weights).forward(ids, trace=True)


# ------------------------------------------------------------------------------------------ Engram ---------
def _primes_above(start, count, taken):
    """Trial division, written here independently of the op's Miller-Rabin."""
    out, p = [], start
    while len(out) < count:
        p += 1
        if p not in taken and all(p % d for d in range(2, int(p ** 0.5) + 1)):
            out.append(p)
            taken.add(p)
    return out


def _hand_layout():
    taken, layers = set(), []
    for _ in CFG.engram_layer_ids:
        cols = []
        for _n in (2, 3, 4):          # each n-gram size restarts its search above vocab_size − 1
            cols += _primes_above(CFG.engram_vocab_size - 1, CFG.engram_n_heads, taken)
        layers.append(cols)
    return layers


def test_engram_rows_and_gated_read_match_a_hand_derivation(weights, ids):
    layout = _hand_layout()
    assert [sum(p) for p in layout] == list(CFG.engram_num_embeddings)      # the preset's table sizes
    mask = np.ones(ids.shape, bool)
    mask[0, 5] = mask[1, 0] = mask[1, 11] = False                           # dead (image-span) positions
    out = NumpyV41(CFG, weights).forward(ids, text_mask=mask, trace=True)
    D, hc = CFG.dim, CFG.hc_mult
    for k, L in enumerate(CFG.engram_layer_ids):
        bound = ((2 ** 63 - 1) // CFG.engram_compressed_vocab_size) // 2
        mult = [int(r) * 2 + 1 for r in np.random.default_rng(10007 * L).integers(0, bound, 4, dtype=np.int64)]
        table, wkv = weights[f"layers.{L}.engram.embed.weight"], weights[f"layers.{L}.engram.wkv.weight"]
        qw, kw = weights[f"layers.{L}.engram.q_weight"], weights[f"layers.{L}.engram.k_weight"]
        h_in = out[f"hidden_block{L - 1}"]
        for b in range(2):
            seq = [int(t) if mask[b, p] else None for p, t in enumerate(ids[b])]
            for p in range(S):
                rows = hand_rows(seq, p, layout[k], mult, CFG.engram_pad_id)
                assert out[f"engram_rows{L}"][b, p].tolist() == rows
                kv = wkv @ np.concatenate([table[r] for r in rows])
                value = kv[hc * D:]
                for s in range(hc):
                    h, key = h_in[b, p, s], kv[s * D:(s + 1) * D]
                    dot = sum(float(a) for a in h * qw[s] * kw[s] * key)
                    dot /= math.sqrt(float(np.mean(h * h)) + 1e-20) * math.sqrt(float(np.mean(key * key)) + 1e-20)
                    dot /= math.sqrt(D)
                    g = 1 / (1 + math.exp(-math.copysign(math.sqrt(max(abs(dot), 1e-6)), dot)))
                    want = h + (g if seq[p] is not None else 0.0) * value
                    np.testing.assert_allclose(out[f"engram_out{L}"][b, p, s], want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------- decode == recompute --------
@pytest.mark.parametrize("cuts", [[9] + list(range(10, S)), [5, 11, 18], [1, 2, 3, 4, 13]])
def test_incremental_equals_one_shot_recompute(weights, ids, full, cuts):
    m = NumpyV41(CFG, weights)
    st = m.new_state(2)
    parts, a = [], 0
    for b in cuts + [S]:
        parts.append(m.forward(ids[:, a:b], st))
        a = b
    assert st.pos == S
    for key in ["embed", "logits", "dspark_hidden"] + [f"hidden_block{i}" for i in range(CFG.n_layers)]:
        got = np.concatenate([p[key] for p in parts], axis=1)
        scale = np.abs(full[key]).max()
        assert np.abs(got - full[key]).max() <= 2e-14 * scale, key


def test_incremental_with_dead_tokens(weights, ids):
    mask = np.ones(ids.shape, bool)
    mask[:, 6:9] = False
    m = NumpyV41(CFG, weights)
    one = m.forward(ids, text_mask=mask)
    st = m.new_state(2)
    parts = [m.forward(ids[:, :7], st, mask[:, :7])] + [m.forward(ids[:, p:p + 1], st, mask[:, p:p + 1])
                                                       for p in range(7, S)]
    got = np.concatenate([p["logits"] for p in parts], axis=1)
    assert np.abs(got - one["logits"]).max() <= 2e-14 * np.abs(one["logits"]).max()
    plain = m.forward(ids)
    assert np.abs(plain["logits"][:, 6:] - one["logits"][:, 6:]).max() > 1e-3      # dead tokens do change it


def test_shipped_index_keys_differ_only_in_decode_at_even_positions(weights, ids, full):
    """DeepSeek's released decode scores a ratio-2 source against the last publisher's keys when its group is
    incomplete (even p). Prefill is the same in both modes; decode matches recompute until the first even step."""
    shipped = forward_v41(CFG, weights, ids, index_keys="shipped")
    assert np.array_equal(shipped["logits"], full["logits"])                 # prefill publishes: unaffected
    own, shp = NumpyV41(CFG, weights), NumpyV41(CFG, weights, index_keys="shipped")
    so, ss = own.new_state(2), shp.new_state(2)
    own.forward(ids[:, :9], so)
    shp.forward(ids[:, :9], ss)
    a, b = own.forward(ids[:, 9:10], so, trace=True), shp.forward(ids[:, 9:10], ss, trace=True)
    assert np.array_equal(a["index_scores2"], b["index_scores2"]) and np.array_equal(a["logits"], b["logits"])
    a, b = own.forward(ids[:, 10:11], so, trace=True), shp.forward(ids[:, 10:11], ss, trace=True)
    for src in (2, 4):                                                      # the ratio-2 sources, p = 10 even
        assert np.abs(a[f"index_scores{src}"] - b[f"index_scores{src}"]).max() > 1e-3
    steps = [b["logits"]] + [shp.forward(ids[:, p:p + 1], ss)["logits"] for p in range(11, S)]
    assert np.abs(np.concatenate(steps, 1) - full["logits"][:, 10:]).max() > 1e-3
    with pytest.raises(ValueError, match="index_keys"):
        NumpyV41(CFG, weights, index_keys="released")


# ------------------------------------------------------------------------------------- CSA-v2 reuse ---------
def test_only_kv_sources_hold_caches(weights, ids):
    m = NumpyV41(CFG, weights)
    st = m.new_state(2)
    m.forward(ids, st)
    assert sorted(st.cmp) == sorted(st.keys) == [2, 4, 6]
    assert [st.cmp[i].shape[1] for i in (2, 4, 6)] == [S // 2, S // 2, S]
    assert [st.keys[i].shape[1] for i in (2, 4, 6)] == [S // 2, S // 2, S]
    assert st.comp[2][1][:, 0].max() > -np.inf                             # S odd: token S−1 waits in slot 0


def test_consumers_reuse_their_sources_topk_and_visibility(full):
    for consumer, source in ((3, 2), (5, 4), (7, 6), (9, 8)):
        np.testing.assert_array_equal(full[f"topk{consumer}"], full[f"topk{source}"])
    assert not np.array_equal(full["topk8"], full["topk6"])                 # the Reindex layer selects anew
    for i in (2, 4, 6, 8):
        r = CFG.ratio(i)
        k = full[f"topk{i}"]
        assert k.shape == (2, S, min(CFG.index_topk, S // r))
        for t in range(S):
            vis = (t + 1) // r
            row = k[:, t]
            assert ((row < vis) & (row >= -1)).all()
            assert ((row >= 0).sum(-1) == min(vis, k.shape[-1])).all()     # ratio 1: the own token is visible
            assert all(sorted(x for x in rr if x >= 0) == [x for x in rr if x >= 0] for rr in row)


def test_two_level_indexer_matches_a_loop_derivation(full):
    I6, cand, I8 = full["index_scores6"], full["candidates"], full["index_scores8"]
    blk, keep = CFG.candidate_block_size, CFG.candidate_topk_blocks
    bites = False
    for b in range(2):
        for t in range(S):
            vis = t + 1
            nb = -(-S // blk)
            score = [max([I6[b, t, j] for j in range(k * blk, min(S, (k + 1) * blk))]) for k in range(nb)]
            score[(vis - 1) // blk] = math.inf
            order = sorted(range(nb), key=lambda k: (-score[k], k))[:keep]
            kept = {k for k in order if score[k] > -math.inf}
            want = [j // blk in kept for j in range(S)]
            assert cand[b, t].tolist() == want
            masked = [(I8[b, t, j] if want[j] else -math.inf, j) for j in range(S)]
            top = sorted(j for _, j in sorted(masked, key=lambda x: (-x[0], x[1]))[:CFG.index_topk])
            assert [j for j in full["topk8"][b, t] if j >= 0] == [j for j in top if j < vis]
            plain = sorted(j for _, j in sorted(((I8[b, t, j], j) for j in range(S)),
                                                key=lambda x: (-x[0], x[1]))[:CFG.index_topk])
            bites |= [j for j in plain if j < vis] != [j for j in top if j < vis]
    assert bites, "the candidate mask never changed a Reindex selection: the test would not see level 2"


def test_candidate_mask_hand_cases():
    ninf = -np.inf
    I = np.array([[[5., 1., ninf, ninf, ninf, ninf],          # t=1 sees 2 of 6 (ratio 1, block 2)
                   [5., 1., 0., 9., 2., ninf],                 # t=4 sees 5: newest block 2 pinned
                   [5., 1., 0., 9., 2., 3.]]])                 # t=5: blocks 0 (5), 1 (9), 2 (3) -> keep 1 and 2
    got = candidate_mask(I, np.array([2, 5, 6]), 2, 2)
    assert got[0].tolist() == [[True, True, False, False, False, False],
                               [False, False, True, True, True, True],
                               [False, False, True, True, True, True]]
    assert candidate_mask(np.full((1, 1, 1), ninf), np.array([0]), 2, 2).tolist() == [[[False]]]


# ------------------------------------------------------------------------------------ pipelined mHC -------
def _hand_pre(w, prefix, h):
    """pre of one sublayer from its input streams h [B, S, hc, D], written from the definition: rsqrt of the
    flattened stream's mean square (eps 1e-20), times fn, then sigmoid(mix·scale[0] + base) + hc_eps."""
    v = h.reshape(*h.shape[:2], -1)
    mix = (v @ w[prefix + "_fn"].T) / np.sqrt(np.mean(v * v, -1, keepdims=True) + 1e-20)
    hc = h.shape[2]
    return 1 / (1 + np.exp(-(mix[..., :hc] * w[prefix + "_scale"][0] + w[prefix + "_base"][:hc]))) + CFG.hc_eps


def test_pipelined_mhc_collapses_with_the_previous_sublayers_pre(weights, full):
    """Attention of block i collapses its input with block i−1's FFN pre (one-hot stream 0 for block 0); the FFN
    collapses the post-attention state with block i's attention pre (computed from the block's input)."""
    np.testing.assert_array_equal(full["attn_in0"], full["embed"])
    for i in range(1, CFG.n_layers):
        h_in = full.get(f"engram_out{i}", full[f"hidden_block{i - 1}"])
        prev = _hand_pre(weights, f"layers.{i - 1}.hc_ffn", full[f"post_attn{i - 1}"])
        np.testing.assert_allclose(full[f"attn_in{i}"], np.einsum("bts,btsd->btd", prev, h_in), rtol=1e-12, atol=1e-12)
    for i in range(CFG.n_layers):
        h_in = full["embed"][:, :, None].repeat(CFG.hc_mult, 2) if i == 0 else \
            full.get(f"engram_out{i}", full[f"hidden_block{i - 1}"])
        own = _hand_pre(weights, f"layers.{i}.hc_attn", h_in)
        np.testing.assert_allclose(full[f"ffn_in{i}"], np.einsum("bts,btsd->btd", own, full[f"post_attn{i}"]),
                                   rtol=1e-12, atol=1e-12)
    # V4's rule (a sublayer collapses with its own pre) gives a different input: the test can tell them apart
    own1 = _hand_pre(weights, "layers.1.hc_attn", full["engram_out1"])
    assert np.abs(np.einsum("bts,btsd->btd", own1, full["engram_out1"]) - full["attn_in1"]).max() > 1e-3


# --------------------------------------------------------------------------------- cache quantisation -----
def test_fp4_e4m3_kv_qdq_hand_cases():
    from ascend_v4.checkpoint.formats import act_quant_fp4_e4m3
    x = np.zeros((3, 16), np.float32)
    x[0, :4] = [3.0, 1.0, 0.3, -0.8]     # amax 3: scale E4M3(0.5) = 0.5; /0.5 -> 6, 2, 0.6 -> 0.5, -1.6 -> -1.5
    x[1, :3] = [2.5, 1.0, 0.7]           # scale E4M3(2.5/6 = 0.41667) = 1.625·2^-2 = 0.40625 (not a power of two):
    #                                       6.15 -> 6 (clamped), 2.46 -> 2, 1.72 -> 1.5
    got = act_quant_fp4_e4m3(x)
    assert got[0, :4].tolist() == [3.0, 1.0, 0.25, -0.75]
    assert got[1, :3].tolist() == [6 * 0.40625, 2 * 0.40625, 1.5 * 0.40625]
    assert not got[2].any() and not got[0, 4:].any()


def test_kv_quant_decode_equals_recompute_and_caches_are_on_the_grids(weights, ids, full):
    m = NumpyV41(CFG, weights, kv_quant=True)
    one = m.forward(ids)
    assert np.abs(one["logits"] - full["logits"]).max() > 1e-4                 # the QDQs do change the model
    st = m.new_state(2)
    parts = [m.forward(ids[:, :8], st)] + [m.forward(ids[:, p:p + 1], st) for p in range(8, S)]
    got = np.concatenate([p["logits"] for p in parts], axis=1)
    assert np.abs(got - one["logits"]).max() <= 2e-14 * np.abs(one["logits"]).max()
    from ascend_v4.checkpoint.formats import e4m3_decode, e4m3_encode
    e2m1 = {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0}
    g = st.cmp[2].reshape(-1, 16)
    for r in g[np.abs(g).max(-1) > 0]:             # compressed KV: E2M1 codes times one E4M3 scale per 16 values
        top = np.abs(r).max()
        assert any(e4m3_decode(e4m3_encode(np.float32(top / c))) == np.float32(top / c)
                   and set(np.round(np.abs(r) / (top / c), 9)) <= e2m1 for c in (6.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.5)), r
    w = st.kv[0].reshape(-1, 32)                                               # window KV: E4M3 × 2^k per 32
    from ascend_v4.checkpoint.formats import act_quant_fp8
    np.testing.assert_array_equal(act_quant_fp8(w, 32), w.astype(np.float32))   # a QDQ'd vector is a fixed point


# ------------------------------------------------------------------------------------------- DSpark -------
def _observed(m, ids, cuts):
    st = m.new_state(ids.shape[0])
    a = 0
    for b in cuts + [ids.shape[1]]:
        m.dspark_observe(m.forward(ids[:, a:b], st), st)
        a = b
    return st


def test_dspark_draft_heads_match_a_hand_derivation(weights, ids):
    m = NumpyV41(CFG, weights)
    st = _observed(m, ids, [])
    y = np.array([7, 300])
    d = m.dspark_draft(y, st)
    bs, last = CFG.dspark_block_size, f"mtp.{CFG.n_mtp_layers - 1}."
    assert d["tokens"].shape == (2, bs) and d["logits"].shape == (2, bs, CFG.vocab_size)
    h = d["hidden"]
    normed = h / np.sqrt(np.mean(h * h, -1, keepdims=True) + 1e-20) * weights[last + "norm.weight"]
    np.testing.assert_allclose(d["base_logits"], normed @ weights["head.weight"].T, rtol=1e-12, atol=1e-12)
    for b in range(2):
        prev = int(y[b])
        for i in range(bs):                        # Markov bias from the previously *sampled* token, then argmax
            e = weights[last + "markov_head.embed.weight"][prev]
            row = d["base_logits"][b, i] + weights[last + "markov_head.head.weight"] @ e
            np.testing.assert_allclose(d["logits"][b, i], row, rtol=1e-12, atol=1e-12)
            conf = float(weights[last + "confidence_head.proj.weight"][0] @ np.concatenate([h[b, i], e]))
            assert abs(d["confidence"][b, i] - conf) <= 1e-12 * max(1.0, abs(conf))
            prev = int(np.argmax(row))
            assert d["tokens"][b, i] == prev


def test_dspark_context_state_and_bidirectional_block(weights, ids):
    m = NumpyV41(CFG, weights)
    one = m.dspark_draft(np.array([7, 300]), _observed(m, ids, []))
    inc = m.dspark_draft(np.array([7, 300]), _observed(m, ids, [6, 7, 15]))   # prefill + steps observed in order
    np.testing.assert_allclose(inc["logits"], one["logits"], rtol=0, atol=2e-14 * np.abs(one["logits"]).max())
    assert np.array_equal(inc["tokens"], one["tokens"])
    # the anchor row attends the later (noise) block rows: another noise id changes row 0
    other = NumpyV41(CFG.replace(dspark_noise_token_id=3), weights)
    d2 = other.dspark_draft(np.array([7, 300]), _observed(other, ids, []))
    assert np.abs(d2["base_logits"][:, 0] - one["base_logits"][:, 0]).max() > 1e-6
    # and the main-model context matters: a different earlier token changes the draft
    ids2 = ids.copy()
    ids2[:, 3] = (ids2[:, 3] + 1) % 300
    d3 = m.dspark_draft(np.array([7, 300]), _observed(m, ids2, []))
    assert np.abs(d3["base_logits"] - one["base_logits"]).max() > 1e-6
    with pytest.raises(ValueError, match="observe"):
        st = m.new_state(2)
        m.forward(ids, st)
        m.dspark_draft(np.array([7, 300]), st)


def test_dspark_sees_only_the_window_of_main_kv(weights, ids):
    m = NumpyV41(CFG, weights)
    st = _observed(m, ids, [])
    one = m.dspark_draft(np.array([7, 300]), st)
    W, p = CFG.window_size, S - 1
    for k in st.dspark_kv:
        st.dspark_kv[k][:, :p + 1 - W] += 5.0                                   # older than the window: unseen
    np.testing.assert_array_equal(m.dspark_draft(np.array([7, 300]), st)["logits"], one["logits"])
    st.dspark_kv[0][:, p + 1 - W] += 5.0                                        # the oldest position inside it
    assert np.abs(m.dspark_draft(np.array([7, 300]), st)["logits"] - one["logits"]).max() > 1e-6


# ------------------------------------------------------------------- one consumer layer, from scratch -----
@pytest.mark.parametrize("layer", [3, 7, 9])
def test_a_reuse_layers_attention_from_its_sources_cache_and_topk(weights, ids, layer):
    """Layer 3 (ratio 2, reuses layer 2), 7 (ratio 1, reuses 6) and 9 (reuses Reindex layer 8's top-k over layer
    6's cache): the attention output recomputed query by query from the layer's own window KV plus the source's
    compressed rows at the source's selected ids, with the sink in the softmax denominator."""
    from ascend_v4.ops.attention.rope import apply_rope, rope_table
    m = NumpyV41(CFG, weights)
    st = m.new_state(2)
    out = m.forward(ids, st, trace=True)
    p, c = f"layers.{layer}.attn.", CFG
    src = {3: 2, 7: 6, 9: 6}[layer]
    topk = out[f"topk{ {3: 2, 7: 6, 9: 8}[layer] }"]
    cos, sin = rope_table(S, c.rope_head_dim, c.compress_rope_theta, c.original_seq_len, c.rope_factor,
                          c.beta_fast, c.beta_slow)
    rms = lambda v, w: v / np.sqrt(np.mean(v * v, -1, keepdims=True) + 1e-20) * w
    x = rms(out[f"attn_in{layer}"], weights[f"layers.{layer}.attn_norm.weight"])
    q = rms(x @ weights[p + "wq_a.weight"].T, weights[p + "q_norm.weight"]) @ weights[p + "wq_b.weight"].T
    q = apply_rope(q.reshape(2, S, c.n_heads, c.head_dim), cos[None, :, None], sin[None, :, None])
    kv = apply_rope(rms(x @ weights[p + "wkv.weight"].T, weights[p + "kv_norm.weight"]), cos[None], sin[None])
    cmp = st.cmp[src]
    sink = weights[p + "attn_sink"]
    o = np.zeros((2, S, c.n_heads, c.head_dim))
    for b in range(2):
        for t in range(S):
            keys = [kv[b, j] for j in range(max(0, t - c.window_size + 1), t + 1)]
            keys += [cmp[b, j] for j in topk[b, t] if j >= 0]
            assert all(j < (t + 1) // c.ratio(layer) for j in topk[b, t] if j >= 0)
            K = np.stack(keys)
            for h in range(c.n_heads):
                z = K @ q[b, t, h] / np.sqrt(c.head_dim)
                e = np.exp(z - z.max())
                o[b, t, h] = (e / (e.sum() + np.exp(sink[h] - z.max()))) @ K
    o = apply_rope(o, cos[None, :, None], sin[None, :, None], inverse=True).reshape(2, S, c.o_groups, -1)
    wo_a = weights[p + "wo_a.weight"].reshape(c.o_groups, c.o_lora_rank, -1)
    want = np.einsum("bsgd,grd->bsgr", o, wo_a).reshape(2, S, -1) @ weights[p + "wo_b.weight"].T
    np.testing.assert_allclose(out[f"attn_out{layer}"], want, rtol=1e-12, atol=1e-14)
