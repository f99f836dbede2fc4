"""DeepSeek-V4.1's serving cache formats (ascend_v4/kv_formats.py, ascend_v4/serve/cache.py; docs/deepseek-v4.1.md,
"KV cache formats").

Fast: the graph-mode encoders against an independent NumPy encoding (ascend_v4/checkpoint/formats.py's bit-trick
E4M3 encoder, E2M1 comparisons, frexp exponents), bit for bit, on random rows and on every rounding tie; the
decoded rows against the golden's QDQs (act_quant_fp8, act_quant_fp4_e4m3) and the indexer's fp4_quant; the
layout's bytes per token and `info v4.1-flash`.
"""
import numpy as np
import pytest

from ascend_v4.checkpoint import formats as F
from ascend_v4.config import V41_PRESETS

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
    """One compiled graph: encode + decode of each format (float32 in) -> a dict of NumPy arrays."""
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
        o = net(ms.Tensor(x))
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


def test_layout_bytes_per_token_and_info(ms_graph):
    """Flash: the reference format stores 890 B per token (the release's figure: FP4 + E4M3 KV, FP4 + E8M0 keys
    of the 4 kv sources, ratio 2 counted per 2 tokens); INT8 and float32 by hand; `info v4.1-flash` prints all."""
    from click.testing import CliRunner
    from ascend_v4.cli import main
    from ascend_v4.serve.cache import CacheLayout
    c = FLASH
    hand = {"float32": (512 * 4, 128 * 4), "int8": (448 + 64 * 4 + 4, 64 + 64 * 4 + 4),
            "reference": (256 + 32, 64 + 4)}
    srcs = [c.ratio(s) for s in c.kv_source_layers]
    assert srcs == [2, 2, 2, 1]
    for fmt, (ent, key) in hand.items():
        lay = CacheLayout(c, 1, 256, kv_format=fmt)
        assert lay.bytes_per_token()["total"] == sum((ent + key) / r for r in srcs), fmt
    assert CacheLayout(c, 1, 256, kv_format="reference").bytes_per_token()["total"] == 890
    assert CacheLayout(c, 1, 256, kv_format="reference").ring_bytes_per_seq() == c.n_layers * 128 * (512 + 16)
    r = CliRunner().invoke(main, ["info", "v4.1-flash"])
    assert r.exit_code == 0, r.output
    line = [ln for ln in r.output.splitlines() if "serving cache" in ln]
    assert line and "reference 890 B, int8 2580 B, float32 6400 B" in line[0], r.output


def test_reference_format_refused_for_v4(tiny_cfg):
    from ascend_v4.serve.cache import CacheLayout
    with pytest.raises(ValueError, match="V4.1's storage"):
        CacheLayout(tiny_cfg, 1, 64, kv_format="reference")
    with pytest.raises(ValueError, match="kv_format must be one of"):
        CacheLayout(FLASH, 1, 64, kv_format="fp8")
