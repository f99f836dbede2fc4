"""Scalar codecs against torch / ml_dtypes (used here only as independent references)."""
import ml_dtypes
import numpy as np
import pytest
import torch

from ascend_v4.checkpoint import formats as F

RNG = np.random.default_rng(1234)
# NaN inputs to the reference casts are intended; their "invalid value" warnings are noise.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
ALL_CODES = np.arange(256, dtype=np.uint8)


def torch_e4m3(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch.float8_e4m3fn).view(torch.uint8).numpy()


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return np.array_equal(np.asarray(a, np.float32).view(np.uint32), np.asarray(b, np.float32).view(np.uint32))


def f32(bits) -> np.ndarray:
    return np.asarray(bits, np.uint32).view(np.float32)


# ------------------------------------------------------------------------------------- E4M3 ----
def test_e4m3_decode_all_codes():
    mine = F.e4m3_decode(ALL_CODES)
    ref_t = torch.from_numpy(ALL_CODES.copy()).view(torch.float8_e4m3fn).float().numpy()
    ref_m = ALL_CODES.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    nan = np.isnan(ref_t)
    assert same_bits(mine[~nan], ref_t[~nan]) and np.isnan(mine[nan]).all()   # including -0.0
    assert np.array_equal(np.signbit(mine), np.signbit(ref_t))                  # 0xFF is -NaN in torch
    finite = ~np.isnan(ref_m)
    assert same_bits(mine[finite], ref_m[finite]) and np.isnan(mine[~finite]).all()
    assert set(np.flatnonzero(np.isnan(mine))) == {0x7F, 0xFF}
    assert mine[0x7E] == 448 and mine[0x01] == 2.0 ** -9 and mine[0x08] == 2.0 ** -6
    assert np.array_equal(F.e4m3_decode(ALL_CODES.view(np.int8)), mine, equal_nan=True)


def _e4m3_sweep() -> np.ndarray:
    vals = np.unique(F.e4m3_decode(ALL_CODES)[~np.isnan(F.e4m3_decode(ALL_CODES))].astype(np.float64))
    mids = ((vals[1:] + vals[:-1]) / 2).astype(np.float32)           # exact ties
    up, dn = np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))
    beyond = np.array([448, 448.0001, 463.99, 464, 464.0001, 479, 480, 481, 512, 1e6, 3.4e38, np.inf], np.float32)
    # every float32 bit pattern from 0 up to 2^-6 (subnormal region) with a stride, and dense strides above
    sub = f32(np.arange(0, 0x3C800000 + 1, 4099, dtype=np.uint32))
    dense = f32(np.arange(0x3A000000, 0x44000000, 977, dtype=np.uint32))  # 2^-11 .. 512
    rnd = f32(RNG.integers(0, 2 ** 32, 500_000, dtype=np.uint64).astype(np.uint32))
    x = np.concatenate([vals.astype(np.float32), mids, up, dn, beyond, sub, dense, rnd, [np.nan]]).astype(np.float32)
    return np.concatenate([x, -x])


def test_e4m3_encode_matches_torch_cast():
    x = _e4m3_sweep()
    assert np.array_equal(F.e4m3_encode(x), torch_e4m3(x))


def test_e4m3_encode_matches_ml_dtypes_in_range():
    x = _e4m3_sweep()
    x = x[np.abs(x) < 464]                     # ml_dtypes turns |x| >= 464 into NaN, torch saturates
    ref = x.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    nan = np.isnan(x)
    assert np.array_equal(F.e4m3_encode(x)[~nan], ref[~nan])


def test_e4m3_encode_edges():
    e = F.e4m3_encode
    assert e(np.float32(464.0)) == 0x7E and e(np.float32(1e30)) == 0x7E and e(np.float32(-np.inf)) == 0xFE
    assert e(np.float32(np.nan)) == 0x7F and e(-np.float32(np.nan)) == 0xFF
    assert e(np.float32(-0.0)) == 0x80 and e(np.float32(-1e-9)) == 0x80       # rounds to -0
    assert e(np.float32(2.0 ** -10)) == 0x00                                  # tie -> even (0)
    assert e(np.float32(3 * 2.0 ** -10)) == 0x02                              # tie 1.5 -> 2
    assert e(np.float32(2.0 ** -6 - 2.0 ** -10)) == 0x08                      # tie into the smallest normal
    assert e(np.float32(17.0)) == e(np.float32(16.0)) and e(np.float32(19.0)) == e(np.float32(20.0))
    assert e(np.ones((2, 3))).shape == (2, 3) and e([]).shape == (0,)
    # round trip of every non-NaN code, including -0
    ok = (ALL_CODES & 0x7F) != 0x7F
    assert np.array_equal(e(F.e4m3_decode(ALL_CODES))[ok], ALL_CODES[ok])


# ------------------------------------------------------------------------------------- E8M0 ----
def test_e8m0_decode_all_codes():
    mine = F.e8m0_decode(ALL_CODES)
    ref = torch.from_numpy(ALL_CODES.copy()).view(torch.float8_e8m0fnu).float().numpy()
    assert same_bits(mine[:255], ref[:255]) and np.isnan(mine[255]) and np.isnan(ref[255])
    assert mine[0] == 2.0 ** -127 and mine[127] == 1.0 and mine[254] == 2.0 ** 127
    ref_m = ALL_CODES.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    assert same_bits(mine[:255], ref_m[:255])


def test_e8m0_encode_full_range_and_rejects():
    pows = np.ldexp(1.0, np.arange(-127, 128))
    codes = F.e8m0_encode(pows)
    assert np.array_equal(codes, np.arange(255, dtype=np.uint8))
    ref = torch.from_numpy(pows.astype(np.float32)).to(torch.float8_e8m0fnu).view(torch.uint8).numpy()
    assert np.array_equal(codes, ref)
    assert F.e8m0_encode(np.float32(np.nan)) == 0xFF
    assert np.array_equal(F.e8m0_encode(F.e8m0_decode(ALL_CODES)), ALL_CODES)
    for bad in (3.0, 0.75, 0.0, -1.0, -0.5, np.inf, 2.0 ** -128, 2.0 ** 128):
        with pytest.raises(ValueError, match="power of two"):
            F.e8m0_encode(bad)


# ------------------------------------------------------------------------------------- E2M1 ----
def test_e2m1_decode_all_codes():
    codes = np.arange(16, dtype=np.uint8)
    ref = codes.view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    assert same_bits(F.e2m1_decode(codes), ref)
    assert F.e2m1_decode(codes).tolist() == [0, .5, 1, 1.5, 2, 3, 4, 6, -0.0, -.5, -1, -1.5, -2, -3, -4, -6]


def test_e2m1_encode_ties_and_saturation():
    ties = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], np.float32)
    assert F.e2m1_encode(ties).tolist() == [0, 2, 2, 4, 4, 6, 6]          # ties go to the even code
    assert F.e2m1_encode(-ties).tolist() == [8, 10, 10, 12, 12, 14, 14]
    assert F.e2m1_encode(np.array([6.5, 7, 100, np.inf, -np.inf], np.float32)).tolist() == [7, 7, 7, 7, 15]
    assert F.e2m1_encode(np.array([-0.0, -0.1], np.float32)).tolist() == [8, 8]
    assert np.array_equal(F.e2m1_encode(F.e2m1_decode(np.arange(16))), np.arange(16))
    with pytest.raises(ValueError, match="NaN"):
        F.e2m1_encode(np.float32(np.nan))


def test_e2m1_encode_matches_ml_dtypes():
    x = np.concatenate([np.linspace(-8, 8, 200_001, dtype=np.float32),
                        np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], np.float32)])
    x = np.concatenate([x, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))])
    ref = x.astype(ml_dtypes.float4_e2m1fn).view(np.uint8)
    assert np.array_equal(F.e2m1_encode(x), ref)


def test_fp4_pack_layout():
    codes = np.array([[1, 2, 15, 0], [7, 8, 3, 12]], np.uint8)
    packed = F.fp4_pack(codes)
    assert packed.dtype == np.int8 and packed.shape == (2, 2)
    assert packed.view(np.uint8).tolist() == [[0x21, 0x0F], [0x87, 0xC3]]   # low nibble = even column
    assert np.array_equal(F.fp4_unpack(packed), codes)
    allc = RNG.integers(0, 16, (5, 64)).astype(np.uint8)
    assert np.array_equal(F.fp4_unpack(F.fp4_pack(allc)), allc)
    # torch's float4_e2m1fn_x2 is the same bytes reinterpreted (docs/formats.md)
    assert torch.from_numpy(packed.copy()).view(torch.float4_e2m1fn_x2).view(torch.uint8).numpy().tolist() \
        == packed.view(np.uint8).tolist()
    with pytest.raises(ValueError):
        F.fp4_pack(np.zeros(3))


# ------------------------------------------------------------------------------------- BF16 ----
def test_bf16_matches_torch_and_ml_dtypes():
    edge = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F80FFFF, 0x7F7FFFFF, 0x7F7F8000, 0x7F7F7FFF,
                     0x00000001, 0x00008000, 0x00018000, 0x007FFFFF, 0x7F800000, 0x80000000, 0xFF800000],
                    np.uint32)
    rnd = RNG.integers(0, 2 ** 32, 1_000_000, dtype=np.uint64).astype(np.uint32)
    bits = np.concatenate([edge, edge | 0x80000000, rnd])
    x = bits.view(np.float32)
    mine = F.bf16_encode(x)
    ref_t = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    ref_m = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    nan = np.isnan(x)
    assert np.array_equal(mine[~nan], ref_t[~nan]) and np.array_equal(mine[~nan], ref_m[~nan])
    assert np.isnan(F.bf16_decode(mine[nan])).all()                         # NaN never becomes inf
    assert np.isnan(F.bf16_decode(F.bf16_encode(f32([0x7F800001, 0xFF800001])))).all()
    assert same_bits(F.bf16_decode(mine[~nan]), ref_m[~nan].view(ml_dtypes.bfloat16).astype(np.float32))
    u = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    dec = F.bf16_decode(u)
    ok = ~np.isnan(dec)
    assert np.array_equal(F.bf16_encode(dec)[ok], u[ok])                    # every bf16 round-trips


# ------------------------------------------------------------------------ scale exponent rule ----
def _kernel_scale_exp(amax: np.ndarray, fmt_max: float) -> np.ndarray:
    """DeepSeek's fast_log2_ceil(amax * f32(1/fmt_max)) done literally in float32 bits."""
    p = (amax.astype(np.float32) * np.float32(1.0 / fmt_max)).astype(np.float32)
    b = p.view(np.uint32)
    return ((b >> 23) & 0xFF).astype(np.int64) - 127 + ((b & 0x7FFFFF) != 0)


@pytest.mark.parametrize("fmt_max,floor", [(448.0, 1e-4), (6.0, 6 * 2.0 ** -126)])
def test_scale_exponent_equals_kernel_float32_arithmetic(fmt_max, floor):
    k = np.arange(-120, 120)
    edges = (fmt_max * np.ldexp(1.0, k)).astype(np.float32)
    near = np.concatenate([edges, np.nextafter(edges, np.float32(np.inf)), np.nextafter(edges, np.float32(0))])
    rnd = f32(RNG.integers(0x00800000, 0x7F000000, 1_000_000, dtype=np.uint64).astype(np.uint32))
    amax = np.maximum(np.concatenate([near, rnd]), np.float32(floor))
    amax = amax[np.isfinite(amax * np.float32(1.0 / fmt_max)) & (amax * np.float32(1 / fmt_max) >= 2.0 ** -126)]
    assert np.array_equal(F._scale_exp(amax, fmt_max, floor), _kernel_scale_exp(amax, fmt_max))
