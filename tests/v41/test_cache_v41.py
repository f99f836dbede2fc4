"""DeepSeek-V4.1's serving cache formats (ascend_v4/kv_formats.py, ascend_v4/serve/cache.py; docs/deepseek-v4.1.md,
"KV cache formats").

Fast: the cache encoders (run eagerly) against an independent NumPy encoding (ascend_v4/checkpoint/formats.py's
bit-trick E4M3 encoder, E2M1 comparisons, frexp exponents), bit for bit, on random rows and on every rounding tie; the
decoded rows against the golden's QDQs (act_quant_fp8, act_quant_fp4_e4m3) and the indexer's fp4_quant; the
layout's bytes per token (== `info v4.1-flash`).
Slow: the engine with the `reference` and `int8` caches (chunked + decode == one-shot, the golden gaps, the stored
rows vs the golden's; ~4-8 min each on the shared host) and test_dspark.py's rollback proof with each format.
"""
import numpy as np
import pytest

from ascend_v4.checkpoint import formats as F
from ascend_v4.config import V41_PRESETS
from helpers import rel_l2_rows, v41_ids

FLASH = V41_PRESETS["v4.1-flash"].validate()


# ------------------------------------------------------------------------------------------ NumPy encoding ----
def _np_pow2_exp(amax, fmt_max):
    mant, ex = np.frexp(amax.astype(np.float64) / fmt_max)
    return (ex - (mant == 0.5)).astype(np.int64)                 # exact ceil(log2(amax / fmt_max))


def np_fp8(x):
    """[..., w] -> (E4M3 codes [..., w], E8M0 codes [..., w / 32])."""
    xb = x.reshape(x.shape[:-1] + (-1, 32))
    e = _np_pow2_exp(np.maximum(np.abs(xb).max(-1), np.float32(1e-4)), 448.0)
    q = F.e4m3_encode(np.clip(xb / np.ldexp(np.float32(1), e)[..., None].astype(np.float32), -448, 448))
    return q.reshape(x.shape), (e + 127).astype(np.uint8)


def np_fp4_e4m3(x):
    """[..., w] -> (packed E2M1 [..., w / 2], E4M3 scale codes [..., w / 16])."""
    xb = x.reshape(x.shape[:-1] + (-1, 16))
    amax = np.maximum(np.abs(xb).max(-1), np.float32(6 * 2.0 ** -9))
    sc = F.e4m3_encode((amax / np.float32(6)).astype(np.float32))
    v = np.clip((xb / F.e4m3_decode(sc)[..., None]).astype(np.float32), -6, 6)
    return F.fp4_pack(F.e2m1_encode(v).reshape(x.shape)).view(np.uint8), sc


def np_fp4_e8m0(x):
    """[..., w] -> (packed E2M1 [..., w / 2], E8M0 codes [..., w / 32])."""
    xb = x.reshape(x.shape[:-1] + (-1, 32))
    e = _np_pow2_exp(np.maximum(np.abs(xb).max(-1), np.float32(6 * 2.0 ** -126)), 6.0)
    v = np.clip((xb / np.ldexp(np.float32(1), e)[..., None]).astype(np.float32), -6, 6)
    return F.fp4_pack(F.e2m1_encode(v).reshape(x.shape)).view(np.uint8), (e + 127).astype(np.uint8)


def _rows(seed):
    """Rows of width 64 over many magnitudes, plus rows built on every E4M3 / E2M1 rounding tie and edge."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 64)) * np.exp2(rng.integers(-30, 20, (40, 1)))
    x[3] = 0.0
    x[4, :] = -0.0
    x[5, ::3] = 0.0
    x[6] *= 1e-3                                                # E4M3 subnormal codes
    pos = F.e4m3_decode(np.arange(0x7F, dtype=np.uint8)).astype(np.float64)
    mids = (pos[:-1] + pos[1:]) / 2                             # 126 E4M3 ties, block max 448 keeps scale 1
    ties8 = np.concatenate([mids, -mids[:2]])
    t8 = np.zeros((4, 64))
    t8.reshape(-1)[:ties8.size] = ties8
    t8[:, 31] = t8[:, 63] = 448.0
    e2 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6])
    m2 = (e2[:-1] + e2[1:]) / 2
    t4 = np.tile(np.concatenate([m2, -m2, [6.0, 5.0]]), 4)[:64].reshape(1, 64)
    t4[0, 15] = t4[0, 31] = t4[0, 47] = t4[0, 63] = 6.0         # every block's amax 6: scale 1 (E4M3 and E8M0)
    return np.concatenate([x, t8, t4, t4 * 2.0 ** -5]).astype(np.float32)


@pytest.fixture(scope="module")
def codec(ms_graph):
    """Encode + decode of each format (float32 in) -> a dict of NumPy arrays."""
    import mindspore as ms
    from mindspore import nn
    from ascend_v4 import kv_formats as K
    from ops.attention.composite import fp4_quant

    class Codec(nn.Cell):
        def construct(self, x):
            out = ()
            for fmt in (K.FP8, K.FP4_E4M3, K.FP4_E8M0, K.INT8):
                parts = K.encode(x, fmt, 48)
                out = out + (parts, K.decode(parts, fmt))
            return out + (fp4_quant(x),)

    net = Codec()

    def run(x):
        # PyNative (same CPU kernels, no compile: the default suite stays fast); the graph-mode encoders are
        # checked through the engine (slow test below: stored rows == the golden's)
        ms.set_context(mode=ms.PYNATIVE_MODE)
        try:
            o = net(ms.Tensor(x))
        finally:
            ms.set_context(mode=ms.GRAPH_MODE)
        names = ("fp8", "fp4_e4m3", "fp4_e8m0", "int8")
        res = {n: ([p.asnumpy() for p in o[2 * i]], o[2 * i + 1].asnumpy()) for i, n in enumerate(names)}
        res["fp4_quant"] = o[-1].asnumpy()
        return res
    return run


def test_graph_codecs_equal_an_independent_numpy_encoding_bit_for_bit(codec):
    x = _rows(0)
    got = codec(x)
    x = np.where(x == 0, np.float32(0), x)      # −0.0 is stored as +0 (kv_formats._negative): the same value
    for name, ref, qdq in (("fp8", np_fp8, lambda v: F.act_quant_fp8(v, 32)),
                           ("fp4_e4m3", np_fp4_e4m3, lambda v: F.act_quant_fp4_e4m3(v, 16)),
                           ("fp4_e8m0", np_fp4_e8m0, None)):
        (codes, scales), dec = got[name]
        rc, rs = ref(x)
        assert codes.dtype == np.uint8 and scales.dtype == np.uint8, name
        assert np.array_equal(codes, rc), (name, int((codes != rc).sum()))
        assert np.array_equal(scales, rs), (name, int((scales != rs).sum()))
        if qdq is not None:            # the golden's QDQ (docs/deepseek-v4.1.md, "Float64 golden"), bit for bit
            assert np.array_equal(dec.view(np.uint32), qdq(x).view(np.uint32)) or np.array_equal(dec, qdq(x)), name
    # index keys: the stored FP4 / E8M0 decode to exactly the indexer's fp4_quant (and the op reference's QDQ)
    from ops.attention.reference import fp4_act_quant
    assert np.array_equal(got["fp4_e8m0"][1], got["fp4_quant"])
    assert np.array_equal(got["fp4_e8m0"][1], fp4_act_quant(x))


def test_int8_scheme_is_v4s(codec):
    """INT8 (both models): 48 leading dims int8 with amax / 127 per row, the rest float32, error <= scale / 2."""
    x = _rows(1)
    (q, rope, s), dec = codec(x)["int8"]
    assert q.dtype == np.int8 and q.shape[-1] == 48 and np.abs(q).max() <= 127
    np.testing.assert_array_equal(rope, x[:, 48:])
    np.testing.assert_allclose(s[:, 0], np.maximum(np.abs(x[:, :48]).max(-1), 1e-12) / 127, rtol=1e-6)
    assert (np.abs(dec[:, :48] - x[:, :48]) <= 0.5 * s * (1 + 1e-5)).all()


def test_layout_bytes_per_token(ms_graph):
    """Flash: the reference format stores 890 B per token (the release's figure: FP4 + E4M3 KV, FP4 + E8M0 keys
    of the 4 kv sources, ratio 2 counted per 2 tokens); INT8 and float32 by hand. `info v4.1-flash` prints them
    (tests/v41/test_info_v41.py)."""
    from ascend_v4.info import v41_kv_bytes_per_token
    from ascend_v4.serve.cache import CacheLayout
    c = FLASH
    hand = {"float32": (512 * 4, 128 * 4), "int8": (448 + 64 * 4 + 4, 64 + 64 * 4 + 4),
            "reference": (256 + 32, 64 + 4)}
    srcs = [c.ratio(s) for s in c.kv_source_layers]
    assert srcs == [2, 2, 2, 1]
    info = v41_kv_bytes_per_token(c)
    for fmt, (ent, key) in hand.items():
        lay = CacheLayout(c, 1, 256, kv_format=fmt)
        assert lay.bytes_per_token()["total"] == sum((ent + key) / r for r in srcs) == info[f"serve_{fmt}"], fmt
    assert info["serve_reference"] == 890
    assert info["serve_reference_rings"] == c.n_layers * 128 * (512 + 16)


def test_reference_format_refused_for_v4(tiny_cfg):
    from ascend_v4.serve.cache import CacheLayout
    with pytest.raises(ValueError, match="V4.1's storage"):
        CacheLayout(tiny_cfg, 1, 64, kv_format="reference")
    with pytest.raises(ValueError, match="kv_format must be one of"):
        CacheLayout(FLASH, 1, 64, kv_format="fp8")


# ------------------------------------------------------------------------------------- the serving engine ----
# v4.1-tiny through the engine with each stored format: chunked prefill (chunks of 8: a ratio-2 group split across
# chunks, rows ending mid-chunk) + decode (one row idle, both parities) == one-shot prefill of the same tokens;
# against the float64 golden (reference: the golden's own cache QDQs, kv_quant=True; int8: the exact golden, as
# the float32 cache matches it to ~1e-6, tests/v41/test_model_v41.py); the stored rows against the golden's.
S0, ND = 21, 6


CFG = V41_PRESETS["v4.1-tiny"].validate()


@pytest.fixture(scope="module")
def tiny_v41():
    from ascend_v4.checkpoint.release_v41 import random_weights_v41
    from ascend_v4.numpy_model_v41 import NumpyV41
    w = random_weights_v41(CFG, seed=5)
    ids = v41_ids(CFG, 1, (2, S0 + ND))
    gold = {q: NumpyV41(CFG, w, kv_quant=q) for q in (False, True)}
    st = gold[True].new_state(2)
    ref_q = gold[True].forward(ids, st)["logits"]
    return {"weights": w, "ids": ids, "ref": gold[False].forward(ids)["logits"], "ref_q": ref_q, "state_q": st,
            "model": {}}


def _engine_run(tiny_v41, fmt):
    """-> (engine, chunked+decode logits [2, S0+ND-1, V], one-shot logits [2, S0+ND, V], cache after the first)."""
    from ascend_v4.serve.engine import Engine
    ids = tiny_v41["ids"]
    eng = Engine(CFG, tiny_v41["weights"], max_batch=2, max_len=64, prefill_chunk=8, ctx_min=64, kv_format=fmt,
                 model=tiny_v41["model"].get("m"))
    tiny_v41["model"]["m"] = eng.model
    lg = eng.prefill([ids[0, :S0], ids[1, :S0 - 3]], return_all=True)
    rows = [list(lg[0]), list(lg[1])]
    for j in range(3):                      # row 1 catches up alone (row 0 inactive)
        rows[1].append(eng.decode_step(np.array([0, ids[1, S0 - 3 + j]]), np.array([False, True]))[1])
    for j in range(ND):
        out = eng.decode_step(ids[:, S0 + j])
        rows[0].append(out[0])
        rows[1].append(out[1])
    arrays = eng.cache.arrays()
    step = np.stack([np.stack(r) for r in rows])                            # positions 0 .. S0+ND-1
    full = np.stack(eng.prefill([ids[0], ids[1]], chunk=32, return_all=True))
    return eng, step, full, arrays


@pytest.mark.slow      # three step graphs (prefill chunks of 8 and 32, decode) per format: ~3 min each
@pytest.mark.timeout(3000)
@pytest.mark.parametrize("fmt", ["reference", "int8"])
def test_quantised_cache_decode_equals_recompute_and_golden_gap(ms_graph, tiny_v41, fmt):
    from ascend_v4.kv_formats import FP4_E4M3, FP4_E8M0, FP8, INT8
    eng, step, full, arr = _engine_run(tiny_v41, fmt)
    # consistency inside the format: chunked + decode == one-shot (measured: see docs/deepseek-v4.1.md)
    cons = rel_l2_rows(step, full)
    # the golden: the reference format against the golden's own cache QDQs; both against the exact golden
    gap_q = rel_l2_rows(step, tiny_v41["ref_q"])
    gap_f = rel_l2_rows(step, tiny_v41["ref"])
    print(f"\n{fmt}: chunked/decode vs one-shot median {np.median(cons):.2e} max {cons.max():.2e}; vs golden "
          f"kv_quant median {np.median(gap_q):.2e} max {gap_q.max():.2e}; vs exact golden median "
          f"{np.median(gap_f):.2e} max {gap_f.max():.2e}")
    assert cons.max() < 2e-5, cons.max()                  # measured: reference 3.3e-6
    if fmt == "reference":                                 # measured: median 7.9e-7, max 2.3e-6
        assert np.median(gap_q) < 5e-6 and gap_q.max() < 2e-5, (np.median(gap_q), gap_q.max())
        # FP4 on v4.1-tiny's random weights moves the logits a lot (measured median 0.35): what the reference's
        # storage costs this model; the golden with the same QDQs agrees to float32 (above)
        assert 0.05 < np.median(gap_f) < 0.6, np.median(gap_f)
    else:       # INT8 against the exact golden (measured: median 6.9e-2, max 0.51 on v4.1-tiny's random weights)
        assert np.median(gap_f) < 0.12 and gap_f.max() < 0.8, (np.median(gap_f), gap_f.max())
    assert np.array_equal(step.argmax(-1), full.argmax(-1))
    # storage: kv sources only, codes as the format says
    lay = eng.cache.layout
    names = {e.name for e in lay.entries}
    assert not any(n.startswith("L3.ent") or n.startswith("L3.ikey") for n in names)
    if fmt == "int8":
        assert lay.kv_ids("L2.ent")[0] == lay.kv_ids("L2.ikey")[0] == lay.kv_ids("L0.win")[0] == INT8
        assert arr["L2.ent_q"].dtype == np.int8 and arr["L2.ikey_q"].shape[-1] == CFG.index_head_dim - CFG.rope_head_dim
        return
    assert (lay.kv_ids("L0.win")[0], lay.kv_ids("L2.ent")[0], lay.kv_ids("L2.ikey")[0]) == (FP8, FP4_E4M3, FP4_E8M0)
    st = tiny_v41["state_q"]                     # the golden after all S0+ND positions (QDQ'd rows, float64)
    n_pos = S0 + ND                              # both rows hold positions 0 .. n_pos - 1
    W, R = CFG.window_size, CFG.window_size + lay.slack
    flips = []
    for s in CFG.kv_source_layers:
        r = CFG.ratio(s)
        n = n_pos // r
        c = F.fp4_unpack(arr[f"L{s}.ent_c"][:, :n])
        ent = F.e2m1_decode(c).reshape(2, n, -1, 16) * F.e4m3_decode(arr[f"L{s}.ent_s"][:, :n])[..., None]
        k = F.e2m1_decode(F.fp4_unpack(arr[f"L{s}.ikey_c"][:, :n])).reshape(2, n, -1, 32)
        k = k * F.e8m0_decode(arr[f"L{s}.ikey_s"][:, :n])[..., None]
        flips += [_flip(ent.reshape(2, n, -1), st.cmp[s][:, :n]), _flip(k.reshape(2, n, -1), st.keys[s][:, :n])]
    for i in range(CFG.n_layers):
        pos = np.arange(n_pos - W, n_pos)
        win = F.e4m3_decode(arr[f"L{i}.win_c"][:, pos % R]).reshape(2, W, -1, 32)
        win = win * F.e8m0_decode(arr[f"L{i}.win_s"][:, pos % R])[..., None]
        flips.append(_flip(win.reshape(2, W, -1), st.kv[i][:, pos]))
    frac = np.mean(flips)
    print(f"stored rows differing from the golden's QDQ (float32 vs float64 pre-quantisation): {frac:.2e}")
    assert frac < 1e-3, frac          # measured 0: every stored value equals the golden's


def _flip(got, want):
    """Fraction of elements whose stored value differs from the golden's (a code rounded the other way)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.mean(got != want.astype(np.float32)))


@pytest.mark.slow      # prefill, (block + 1)-token verify and decode graphs per format: ~3 min each
@pytest.mark.timeout(3000)
@pytest.mark.parametrize("fmt", ["reference", "int8"])
def test_dspark_rollback_stays_exact_in_quantised_formats(ms_graph, monkeypatch, fmt):
    """tests/v41/test_dspark.py's rollback proof (a rejected draft leaves every readable cache row, later logits
    and every buffer but the scratch rows bit-identical to a run that never saw it) with the quantised cache."""
    from ascend_v4.serve import engine as E
    from .test_dspark import test_rejected_draft_leaves_the_cache_as_a_run_that_never_saw_it as rollback_proof
    init = E.Engine.__init__

    def with_format(self, *a, **k):
        init(self, *a, kv_format=fmt, **k)
    monkeypatch.setattr(E.Engine, "__init__", with_format)
    rollback_proof(ms_graph)
