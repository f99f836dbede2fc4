"""int8 / int4 per-channel quantisers (error bounds, ranges, nibble order) and the fast exact BF16
decoders of the release formats against a plain NumPy reference."""
import numpy as np
import pytest

from ascend_v4.checkpoint import formats as F
from ascend_v4.convert import quantize as Q

RNG = np.random.default_rng(7)


def _weights():
    w = RNG.standard_normal((67, 96)).astype(np.float32) * np.exp(RNG.normal(0, 2, (67, 1))).astype(np.float32)
    w[3] = 0.0                                   # all-zero channel
    w[5, 7] = 1e4                                # outlier channel
    w[6] = 1e-30                                 # tiny channel
    return w


@pytest.mark.parametrize("bits", [8, 4])
def test_int_quant_error_at_most_half_a_step_per_channel(bits):
    w = _weights()
    if bits == 8:
        q, s = Q.quant_int8(w)
        assert q.dtype == np.int8 and q.shape == w.shape
        vals, deq, qmax = q, Q.dequant_int8(q, s), 127
    else:
        p, s = Q.quant_int4(w)
        assert p.dtype == np.int8 and p.shape == (w.shape[0], w.shape[1] // 2)
        vals, deq, qmax = Q.unpack_int4(p), Q.dequant_int4(p, s), 7
    assert s.dtype == np.float32 and s.shape == (w.shape[0],)
    amax = np.abs(w).max(axis=1)
    nz = amax > 0
    np.testing.assert_allclose(s[nz], amax[nz] / qmax, rtol=1e-6)
    assert s[3] == 1.0 and not vals[3].any()                       # zero channel: scale 1, codes 0
    assert vals.min() >= -qmax and vals.max() <= qmax              # symmetric: -128 / -8 never used
    assert (np.abs(vals).max(axis=1)[nz] == qmax).all()            # the full range is used
    err = np.abs(deq.astype(np.float64) - w)
    bound = s.astype(np.float64)[:, None] * (0.5 + 1e-5)
    assert (err <= bound).all(), float((err / s[:, None]).max())


def test_int4_packing_nibble_order_and_range():
    q = np.array([[1, -2, 7, -8, 0, -1]], np.int8)
    p = Q.pack_int4(q)
    # low nibble = even column, high nibble = odd column, two's complement
    assert p.view(np.uint8).tolist() == [[0xE1, 0x87, 0xF0]]
    assert np.array_equal(Q.unpack_int4(p), q)
    allv = np.array(np.meshgrid(np.arange(-8, 8), np.arange(-8, 8))).reshape(2, -1).T.reshape(1, -1).astype(np.int8)
    assert np.array_equal(Q.unpack_int4(Q.pack_int4(allv)), allv)
    with pytest.raises(ValueError):
        Q.pack_int4(np.zeros((2, 3), np.int8))


def test_int_quant_rejects_non_finite():
    w = np.ones((2, 4), np.float32)
    w[1, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        Q.quant_int8(w)


def _ref_fp8_bf16(q, s):
    return F.bf16_encode(F.dequant_fp8_block(q, s))


@pytest.mark.parametrize("shape", [(300, 512), (300, 200), (130, 77)])
def test_fp8_to_bf16_exact_against_reference(shape):
    w = (RNG.standard_normal(shape) * np.exp(RNG.normal(0, 3, shape))).astype(np.float32)
    q, s = F.quant_fp8_block(w)
    ref = _ref_fp8_bf16(q, s)
    c = Q.Counts()
    for a, b in [(0, shape[0]), (0, 1), (127, 129), (130, shape[0])]:
        out = Q.fp8_block_to_bf16(q[a:b], s, a, c)
        assert out.dtype == np.uint16 and np.array_equal(out, ref[a:b]), (a, b)
    assert not c.bad()


def test_fp8_every_code_and_scale_against_reference():
    """All 256 codes x every E8M0 scale: the table path where BF16 holds the values, the exact path
    (with counts) elsewhere; both agree with float64 arithmetic."""
    q = np.tile(np.arange(256, dtype=np.uint8), (128, 1))            # [128, 256]: 2 column blocks
    for code in range(0, 255, 3):
        s = np.array([[code, (code + 1) % 255]], np.uint8)
        c = Q.Counts()
        out = Q.fp8_block_to_bf16(q, s, 0, c)
        v = F.e4m3_decode(q).astype(np.float64) * np.repeat(np.ldexp(1.0, s.astype(np.int64) - 127), 128, axis=1)
        with np.errstate(over="ignore", invalid="ignore"):
            f32 = v.astype(np.float32)
        fin = np.isfinite(f32)
        exact = fin & (f32.astype(np.float64) == v) & ((f32.view(np.uint32) & 0xFFFF) == 0)
        assert np.array_equal(out[exact], (f32.view(np.uint32) >> 16).astype(np.uint16)[exact]), code
        assert c.nan == int(np.isnan(v).sum())
        assert c.inf == int(np.isinf(f32).sum())
        assert c.inexact == int((fin & ~exact).sum()), code


def test_mxfp4_to_bf16_exact_and_counts():
    w = (RNG.standard_normal((64, 256)) * np.exp(RNG.normal(0, 4, (64, 1)))).astype(np.float32)
    p, s = F.quant_mxfp4(w)
    c = Q.Counts()
    assert np.array_equal(Q.mxfp4_to_bf16(p, s, c), F.bf16_encode(F.dequant_mxfp4(p, s)))
    assert not c.bad()
    s2 = s.copy()
    s2[0, 0] = 255                      # NaN scale: 32 NaN values
    s2[1, 1] = 254                      # 6 * 2^127 overflows: Inf
    c = Q.Counts()
    Q.mxfp4_to_bf16(p, s2, c)
    big = np.abs(F.e2m1_decode(F.fp4_unpack(p))[1, 32:64]).astype(np.float64) * 2.0 ** 127
    assert c.nan == 32 and c.inf == int((big > np.finfo(np.float32).max).sum()) and c.inf > 0


def test_counts_fast_check_matches_naive():
    bits = F.bf16_encode(RNG.standard_normal(4096).astype(np.float32))
    c = Q.Counts()
    c.add_bits(bits)
    assert not c.bad()
    bits[[5, 17, 100]] = [0x7F80, 0xFF80, 0x7FC1]                 # +Inf, -Inf, NaN
    c.add_bits(bits)
    assert (c.nan, c.inf) == (1, 2)
    c = Q.Counts()
    c.add_bits(bits[:4095])                                         # odd size: the fallback path
    assert (c.nan, c.inf) == (1, 2)


def test_fast_bf16_row_quantiser_matches_the_reference():
    w = F.bf16_round(_weights())
    w[6] = 0.0
    bits = F.bf16_encode(w)
    for qmax, ref in ((127, Q.quant_int8), (7, None)):
        q, s = Q.quant_bf16_rows(bits, qmax)
        if ref is None:
            p, s2 = Q.quant_int4(w)
            q2 = Q.unpack_int4(p)
        else:
            q2, s2 = ref(w)
        assert np.array_equal(s, s2) and np.array_equal(q, q2)
