"""Bit-exact NumPy codecs for the number formats of the DeepSeek-V4 release (docs/formats.md).

Everything here works on raw storage: E4M3 / E8M0 / packed E2M1 as uint8 / int8 codes, BF16 as
uint16. No torch or ml_dtypes, so the loaders run anywhere NumPy does.

Choices (all checked against torch 2.13 in tests/checkpoint):
* e4m3_encode saturates: |x| beyond 448 (including +-inf) becomes +-448, like torch's CPU
  `.to(float8_e4m3fn)` and CUDA's `cvt.rn.satfinite`; NaN becomes 0x7F / 0xFF (sign kept).
  ml_dtypes differs: it gives NaN for |x| >= 464. The quantisers clamp to +-448 first anyway.
* e2m1_encode also saturates at +-6 (E2M1 has no inf/NaN); NaN input is an error.
* Rounding is round-to-nearest-even everywhere.

Block quantisers derive power-of-two scales as DeepSeek's kernels do,
`2^ceil(log2(amax / fmt_max))`, with amax floored (1e-4 for FP8, 6*2^-126 for FP4). The stored
*values* are exactly those of that rule. Its bytes are not unique, though: a block whose maximum
code is the format max (448 / 6) and whose codes all halve exactly has the same values at twice the
scale, and the plain rule applied to those values would pick the other encoding. We always store
the coarser one ("canonical"), which makes the codecs idempotent - quant(dequant(q, s)) == (q, s)
for everything they write - and, for a checkpoint quantised with the plain rule, reproduces every
block except the rare max-code blocks whose codes all halve (see `quant_fp8_block`).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

E4M3_MAX = 448.0
E2M1_MAX = 6.0
FP8_AMAX_FLOOR = 1e-4            # act_quant's amax floor
FP4_AMAX_FLOOR = 6.0 * 2.0 ** -126  # fp4_act_quant's amax floor
E8M0_NAN = 0xFF


# ----------------------------------------------------------------------------------- E4M3 ----
def _e4m3_table() -> np.ndarray:
    codes = np.arange(256)
    exp = (codes >> 3) & 0xF
    man = (codes & 7).astype(np.float64)
    mag = np.where(exp == 0, man * 2.0 ** -9, (1.0 + man / 8.0) * np.exp2(exp - 7.0))
    mag[(codes & 0x7F) == 0x7F] = np.nan
    return np.where(codes & 0x80, -mag, mag).astype(np.float32)   # 0xFF decodes to -NaN, like torch


_E4M3_TABLE = _e4m3_table()


def _codes(u8, who: str) -> np.ndarray:
    """8-bit float codes as uint8 (int8 storage is viewed as bytes); any other dtype is a TypeError."""
    u8 = np.asarray(u8)
    if u8.dtype == np.int8:
        u8 = u8.view(np.uint8)
    if u8.dtype != np.uint8:
        raise TypeError(f"{who} wants uint8 codes, got {u8.dtype}")
    return u8


def e4m3_decode(u8: np.ndarray) -> np.ndarray:
    """float8_e4m3fn codes (uint8, or int8 viewed as bytes) -> float32."""
    u8 = _codes(u8, "e4m3_decode")
    return _E4M3_TABLE[u8]


def e4m3_encode(x) -> np.ndarray:
    """float -> float8_e4m3fn codes (uint8), RNE, saturating at +-448, NaN -> 0x7F|sign."""
    x = np.asarray(x, dtype=np.float32)
    shape, x = x.shape, x.reshape(-1)
    bits = x.view(np.uint32)
    sign = ((bits >> 24) & 0x80).astype(np.uint8)
    abits = bits & np.uint32(0x7FFFFFFF)
    # Normal range (|x| >= 2^-6): round the 23-bit mantissa to 3 bits (RNE) on the bit pattern; a
    # carry rolls into the exponent, which is exactly right. E4M3 exponent = f32 exponent - 120.
    rounded = ((abits + np.uint32(0x7FFFF) + ((abits >> 20) & 1)) >> 20).astype(np.int32)
    code = np.clip(rounded - (120 << 3), 0, 0x7E).astype(np.uint8)    # 0x7E = 448: saturate
    # Subnormal range: value = m * 2^-9; x * 2^9 is exact, rint is RNE; m == 8 is the smallest normal.
    small = abits < np.uint32(0x3C800000)                              # |x| < 2^-6
    if small.any():
        code[small] = np.rint(np.abs(x[small]) * np.float32(512.0)).astype(np.uint8)
    code[abits > np.uint32(0x7F800000)] = 0x7F                         # NaN
    return (code | sign).reshape(shape)


# ----------------------------------------------------------------------------------- E8M0 ----
_E8M0_TABLE = np.append(np.ldexp(1.0, np.arange(255) - 127), np.nan).astype(np.float32)


def e8m0_decode(u8: np.ndarray) -> np.ndarray:
    """float8_e8m0fnu codes -> float32 2^(e-127); 0xFF -> NaN. Code 0 is 2^-127 (an f32 subnormal)."""
    u8 = _codes(u8, "e8m0_decode")
    return _E8M0_TABLE[u8]


def e8m0_encode(x) -> np.ndarray:
    """Exact powers of two in [2^-127, 2^127] (or NaN) -> uint8 codes. Anything else is a ValueError:
    E8M0 cannot round a scale without changing every value it multiplies."""
    x = np.asarray(x, dtype=np.float64)
    nan = np.isnan(x)
    with np.errstate(invalid="ignore"):
        mant, exp = np.frexp(np.where(nan, 1.0, x))
    ok = nan | ((mant == 0.5) & (exp - 1 >= -127) & (exp - 1 <= 127))
    if not ok.all():
        bad = x[~ok].ravel()[0]
        raise ValueError(f"e8m0_encode: {bad!r} is not a power of two in [2^-127, 2^127] "
                         f"({int((~ok).sum())} such values); E8M0 only stores exponents")
    return np.where(nan, E8M0_NAN, exp - 1 + 127).astype(np.uint8)


# ----------------------------------------------------------------------------------- E2M1 ----
E2M1_VALUES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)
# Midpoints between consecutive magnitudes, and whether an exact tie goes up (upper code even).
_E2M1_MID = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], np.float32)
_E2M1_TIE_UP = np.array([False, True, False, True, False, True, False])


def e2m1_decode(codes: np.ndarray) -> np.ndarray:
    """4-bit E2M1 codes (0..15, any integer dtype) -> float32."""
    return E2M1_VALUES[np.asarray(codes).astype(np.uint8) & 0xF]


def e2m1_encode(x) -> np.ndarray:
    """float -> E2M1 codes (uint8 0..15), RNE (ties to the even code), saturating at +-6."""
    x = np.asarray(x, dtype=np.float32)
    if np.isnan(x).any():
        raise ValueError("e2m1_encode: NaN has no E2M1 code")
    a = np.abs(x)[..., None]
    up = (a > _E2M1_MID) | ((a == _E2M1_MID) & _E2M1_TIE_UP)
    mag = up.sum(axis=-1, dtype=np.uint8)
    return mag | (np.signbit(x).astype(np.uint8) << 3)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """[..., 2n] 4-bit codes (their low nibbles) -> int8 [..., n]: low nibble = even column, high nibble = odd
    column. The byte layout of MXFP4 weights and of int4 weights."""
    codes = np.asarray(codes)
    if codes.shape[-1] % 2:
        raise ValueError(f"4-bit packing needs an even last dimension, got shape {codes.shape}")
    c = codes.view(np.uint8) if codes.dtype == np.int8 else codes.astype(np.uint8)
    c = c & np.uint8(0xF)
    return (c[..., 0::2] | (c[..., 1::2] << np.uint8(4))).view(np.int8)


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    """int8/uint8 [..., n] -> uint8 nibbles [..., 2n] (inverse of pack_nibbles)."""
    p = np.asarray(packed)
    if p.dtype not in (np.int8, np.uint8):
        raise TypeError(f"4-bit unpacking wants int8/uint8 bytes, got {p.dtype}")
    p = p.view(np.uint8)
    out = np.empty(p.shape[:-1] + (2 * p.shape[-1],), np.uint8)
    out[..., 0::2] = p & np.uint8(0xF)
    out[..., 1::2] = p >> np.uint8(4)
    return out


def fp4_pack(codes: np.ndarray) -> np.ndarray:
    """[..., 2n] E2M1 codes -> int8 [..., n] (pack_nibbles)."""
    return pack_nibbles(codes)


def fp4_unpack(packed: np.ndarray) -> np.ndarray:
    """int8/uint8 [..., n] -> uint8 codes [..., 2n] (inverse of fp4_pack)."""
    return unpack_nibbles(packed)


# ----------------------------------------------------------------------------------- BF16 ----
def bf16_encode(x) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), RNE. NaN stays NaN (quiet bit set, sign and top payload kept)."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    # No uint32 overflow: the largest non-NaN pattern (-inf, 0xFF800000) + 0x8000 still fits.
    with np.errstate(over="ignore"):
        rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    return np.where(nan, ((bits >> 16) | np.uint32(0x0040)).astype(np.uint16), rounded)


def bf16_decode(u16: np.ndarray) -> np.ndarray:
    u16 = np.asarray(u16)
    if u16.dtype == np.int16:
        u16 = u16.view(np.uint16)
    if u16.dtype != np.uint16:
        raise TypeError(f"bf16_decode wants uint16 bits, got {u16.dtype}")
    return (u16.astype(np.uint32) << 16).view(np.float32)


def bf16_round(x) -> np.ndarray:
    """float32 rounded to the nearest bfloat16 (returned as float32)."""
    return bf16_decode(bf16_encode(x))


# ------------------------------------------------------------------------- scale exponents ----
def _ceil_log2(x: np.ndarray) -> np.ndarray:
    """Exact ceil(log2(x)) for positive finite x (frexp, no transcendental rounding)."""
    mant, exp = np.frexp(np.asarray(x, np.float64))
    return (exp - (mant == 0.5)).astype(np.int64)


def _scale_exp(amax: np.ndarray, fmt_max: float, floor: float) -> np.ndarray:
    # DeepSeek computes fast_log2_ceil(amax * f32(1/fmt_max)) in float32; for every f32 amax that
    # equals the exact ceil(log2(amax / fmt_max)) (checked in tests), which is what we compute.
    return _ceil_log2(np.maximum(np.asarray(amax, np.float64), floor) / fmt_max)


def _check_finite(w: np.ndarray, what: str) -> None:
    if not np.isfinite(w).all():
        raise ValueError(f"{what}: input has {int((~np.isfinite(w)).sum())} non-finite values; "
                         f"weights must be finite to quantise")


def _as_matrix(w, what: str) -> np.ndarray:
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"{what} wants a 2-D [out, in] weight, got shape {w.shape}")
    return w


def _expand(s: np.ndarray, shape: Tuple[int, int], br: int, bc: int) -> np.ndarray:
    """Repeat a per-block array up to the element grid (ragged edge blocks are cut)."""
    return np.repeat(np.repeat(s, br, axis=0), bc, axis=1)[: shape[0], : shape[1]]


# ------------------------------------------------------------------------- FP8 blocks --------
def _block_shape(block) -> Tuple[int, int]:
    """An int b means b×b (V4 128×128, V4.1 32×32 weights); a pair (rows, cols) a rectangular block (V4.1's
    Engram tables: (1, 32), one scale per 32 consecutive values of a row)."""
    br, bc = (block, block) if np.ndim(block) == 0 else block
    return int(br), int(bc)


def _fp8_block_amax(w: np.ndarray, block) -> np.ndarray:
    br, bc = _block_shape(block)
    r, c = w.shape
    nr, nc = -(-r // br), -(-c // bc)
    pad = np.zeros((nr * br, nc * bc), np.float32)         # zero padding never raises an amax
    pad[:r, :c] = np.abs(w)
    return pad.reshape(nr, br, nc, bc).max(axis=(1, 3))


def _scale_grid(shape, block) -> Tuple[int, int]:
    br, bc = _block_shape(block)
    return -(-shape[0] // br), -(-shape[1] // bc)


def quant_fp8_block(w, block=128, scale: Optional[np.ndarray] = None,
                    canonical: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """float [out, in] -> (E4M3 codes uint8 [out, in], E8M0 scale codes uint8 [ceil(out/br), ceil(in/bc)]).

    block: b (b×b blocks) or (br, bc). Scale per block = 2^ceil(log2(max(amax, 1e-4) / 448));
    q = RNE(clamp(w / scale, +-448)).

    canonical=True (default): where a block's max |code| is 448 and every code halves exactly in
    E4M3, store (q/2, 2*scale) - identical values, the encoding the rule itself picks when given
    those values. So quant(dequant(q, s)) == (q, s) for everything this function returns. For a
    foreign (q, s), e.g. an official checkpoint, it holds per block iff the block's max value A (in
    scale units) is in [224, 448], or its scale is the 1e-4 floor 2^-22 - in both cases except
    A == 448 with all codes halvable. Other blocks come back with equal values, other bytes.
    canonical=False: the plain rule's bytes; not idempotent (a block whose max rounded to 224
    re-quantises as (2q, scale/2)).

    scale: E8M0 codes to quantise onto instead of deriving them (values beyond 448*scale saturate);
    with a source checkpoint's own scales this reproduces its bytes for every unmodified block.
    """
    w = _as_matrix(w, "quant_fp8_block")
    _check_finite(w, "quant_fp8_block")
    br, bc = _block_shape(block)
    if scale is not None:
        exp = _given_exp(scale, _scale_grid(w.shape, block), "quant_fp8_block")
        return _encode_fp8(w, exp, block), (exp + 127).astype(np.uint8)
    exp = _scale_exp(_fp8_block_amax(w, block), E4M3_MAX, FP8_AMAX_FLOOR)
    q = _encode_fp8(w, exp, block)
    if canonical:
        v = e4m3_decode(q)
        half = v * np.float32(0.5)
        odd = (e4m3_decode(e4m3_encode(half)) != half).astype(np.float32)   # 1 where v/2 is not E4M3
        coarse = (_fp8_block_amax(v, block) == E4M3_MAX) & (_fp8_block_amax(odd, block) == 0)
        if coarse.any():
            exp = exp + coarse
            q = np.where(_expand(coarse, w.shape, br, bc), e4m3_encode(half), q)
    return q, (exp + 127).astype(np.uint8)


def _given_exp(scale, shape, what: str) -> np.ndarray:
    s = np.asarray(scale)
    if s.shape != tuple(shape):
        raise ValueError(f"{what}: scale shape {s.shape} != expected {tuple(shape)}")
    if s.dtype != np.uint8:
        raise TypeError(f"{what}: scale must be uint8 E8M0 codes, got {s.dtype}")
    if (s == E8M0_NAN).any():
        raise ValueError(f"{what}: scale contains the E8M0 NaN code 0xFF")
    return s.astype(np.int64) - 127


def _encode_fp8(w: np.ndarray, exp: np.ndarray, block) -> np.ndarray:
    scaled = np.ldexp(w, -_expand(exp, w.shape, *_block_shape(block)))   # exact: power-of-two scaling
    return e4m3_encode(np.clip(scaled, -E4M3_MAX, E4M3_MAX))


def dequant_fp8_block(q: np.ndarray, s: np.ndarray, block=128) -> np.ndarray:
    """E4M3 codes [out, in] + E8M0 codes [ceil(out/br), ceil(in/bc)] -> float32 (exact); block as quant_fp8_block."""
    q = np.asarray(q)
    s = np.asarray(s)
    want = _scale_grid(q.shape, block) if q.ndim == 2 else None
    if q.ndim != 2 or s.shape != want:
        raise ValueError(f"dequant_fp8_block: weight {q.shape} needs scale {want}, got {s.shape}")
    return (e4m3_decode(q) * _expand(e8m0_decode(s), q.shape, *_block_shape(block))).astype(np.float32)


# ------------------------------------------------------------------------- MXFP4 1x32 --------
def quant_mxfp4(w, block: int = 32, scale: Optional[np.ndarray] = None,
                canonical: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """float [out, in] -> (int8 packed [out, in/2], E8M0 codes uint8 [out, in/block]).

    Scale per 1 x block = 2^ceil(log2(max(amax, 6*2^-126) / 6)); codes = RNE(clamp(w / scale, +-6)).
    canonical / scale: as in quant_fp8_block. A block with max code 6 and no +-0.5 / +-1.5 codes is
    stored as (codes/2, 2*scale); a foreign block round-trips iff its max is 3, 4 or 6 (not the
    halvable-6 case) or its scale is the floor 2^-126. The plain rule's non-idempotent case (max
    rounded to 3, amax/scale in (3, 3.5)) is common here: about one block in five.
    """
    w = _as_matrix(w, "quant_mxfp4")
    _check_finite(w, "quant_mxfp4")
    out, inp = w.shape
    if inp % block:
        raise ValueError(f"quant_mxfp4: input dim {inp} is not a multiple of the block size {block}")
    wb = w.reshape(out, inp // block, block)
    if scale is not None:
        exp = _given_exp(scale, (out, inp // block), "quant_mxfp4")
    else:
        exp = _scale_exp(np.abs(wb).max(axis=-1), E2M1_MAX, FP4_AMAX_FLOOR)
    codes = e2m1_encode(np.clip(np.ldexp(wb, -exp[..., None]), -E2M1_MAX, E2M1_MAX))
    if canonical and scale is None:
        mag = codes & 7
        # codes 1 (0.5) and 3 (1.5) are the only ones whose half is not an E2M1 value
        coarse = (mag.max(axis=-1) == 7) & ~((mag == 1) | (mag == 3)).any(axis=-1)
        if coarse.any():
            exp = exp + coarse
            halved = e2m1_encode(e2m1_decode(codes) * np.float32(0.5))
            codes = np.where(coarse[..., None], halved, codes)
    return fp4_pack(codes.reshape(out, inp)), (exp + 127).astype(np.uint8)


def dequant_mxfp4(packed: np.ndarray, s: np.ndarray, block: int = 32) -> np.ndarray:
    """int8 packed [out, in/2] + E8M0 codes [out, in/block] -> float32 [out, in] (exact)."""
    codes = fp4_unpack(packed)
    out, inp = codes.shape
    s = np.asarray(s)
    if s.shape != (out, inp // block) or inp % block:
        raise ValueError(f"dequant_mxfp4: weight [{out}, {inp}] needs scale [{out}, {inp // block}], "
                         f"got {list(s.shape)}")
    vals = e2m1_decode(codes).reshape(out, inp // block, block)
    return (vals * e8m0_decode(s)[..., None]).reshape(out, inp).astype(np.float32)


def mxfp4_to_fp8_block(packed: np.ndarray, s: np.ndarray, block: int = 128,
                       fp4_block: int = 32) -> Tuple[np.ndarray, np.ndarray]:
    """Lossless MXFP4 -> FP8 128x128 re-encoding of DeepSeek's inference/convert.py (docs/formats.md).

    New scale per 128x128 block = max(sub-block FP4 scales) / 2^6 (so 6 * max scale -> 384 <= 448);
    every element becomes fp4_value * 2^(its exponent - new exponent). The new exponent is raised to
    -127 if it would fall below E8M0's range. Raises ValueError if any element is not exactly
    representable in E4M3 (a sub-block scale more than 2^14 below its block's largest).
    """
    codes = fp4_unpack(packed)
    out, inp = codes.shape
    s = np.asarray(s)
    if s.shape != (out, inp // fp4_block) or inp % fp4_block or block % fp4_block:
        raise ValueError(f"mxfp4_to_fp8_block: weight [{out}, {inp}] needs scale "
                         f"[{out}, {inp // fp4_block}], got {list(s.shape)}")
    if (s == E8M0_NAN).any():
        raise ValueError("mxfp4_to_fp8_block: scale contains the E8M0 NaN code 0xFF")
    e4 = s.astype(np.int64) - 127                                    # [out, in/32]
    per = block // fp4_block
    nr, nc = -(-out // block), -(-inp // block)
    pad = np.full((nr * block, nc * per), -(1 << 20), np.int64)
    pad[:out, : e4.shape[1]] = e4
    new = np.maximum(pad.reshape(nr, block, nc, per).max(axis=(1, 3)) - 6, -127)   # [nr, nc]
    shift = np.repeat(e4, fp4_block, axis=1) - _expand(new, (out, inp), block, block)
    vals = np.ldexp(e2m1_decode(codes).astype(np.float64), shift)
    q = e4m3_encode(vals.astype(np.float32))
    bad = e4m3_decode(q).astype(np.float64) != vals
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(
            f"mxfp4_to_fp8_block: element [{r}, {c}] (fp4 {e2m1_decode(codes[r, c])} x 2^{e4[r, c // fp4_block]}) "
            f"is not representable in E4M3 next to its 128x128 block's scale 2^{new[r // block, c // block]} "
            f"({int(bad.sum())} such elements); its 1x32 scale sits too far (about 2^14) below the "
            f"block's largest - keep these experts in FP4")
    return q, (new + 127).astype(np.uint8)


# ----------------------------------------------------------------- activation fake-quant -----
def _blocks_last(x, block: int, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] % block:
        raise ValueError(f"{what}: last dim of shape {x.shape} is not a multiple of block {block}")
    return x.reshape(x.shape[:-1] + (x.shape[-1] // block, block))


def act_quant_fp8(x, block: int = 128, ue8m0: bool = True) -> np.ndarray:
    """Quantise-dequantise along the last dim like DeepSeek's act_quant(inplace=True), in float32.

    amax floored at 1e-4; ue8m0: scale = 2^ceil(log2(amax/448)), else scale = amax * f32(1/448)
    (kernel's float32 arithmetic). y = e4m3(clamp(x/scale, +-448)) * scale. The reference then
    casts y to the input dtype (bf16); with ue8m0 scales that cast is exact.
    """
    xb = _blocks_last(x, block, "act_quant_fp8")
    amax = np.maximum(np.abs(xb).max(axis=-1, keepdims=True), np.float32(FP8_AMAX_FLOOR))
    if ue8m0:
        scale = np.exp2(_scale_exp(amax, E4M3_MAX, FP8_AMAX_FLOOR)).astype(np.float32)
    else:
        scale = (amax * np.float32(1.0 / E4M3_MAX)).astype(np.float32)
    q = e4m3_decode(e4m3_encode(np.clip(xb / scale, -E4M3_MAX, E4M3_MAX)))
    return (q * scale).astype(np.float32).reshape(np.shape(x))


def act_quant_fp4_e4m3(x, block: int = 16) -> np.ndarray:
    """Quantise-dequantise along the last dim as DeepSeek-V4.1 stores its compressed KV (FP4 E2M1 codes with one
    E4M3 scale per 16 values), float32: amax floored at 6·2^-9 (a zero group keeps a non-zero scale);
    scale = E4M3_RNE_satfinite(f32(amax) / 6) (a float32 division, then E4M3 rounding - not a power of two);
    y = E2M1_RNE(clamp(f32(x) / scale, +-6)) * scale (float32 division). docs/deepseek-v4.1.md, "Float64 golden"."""
    xb = _blocks_last(x, block, "act_quant_fp4_e4m3")
    amax = np.maximum(np.abs(xb).max(axis=-1, keepdims=True), np.float32(E2M1_MAX * 2.0 ** -9))
    scale = e4m3_decode(e4m3_encode((amax / np.float32(E2M1_MAX)).astype(np.float32)))
    q = e2m1_decode(e2m1_encode(np.clip((xb / scale).astype(np.float32), -E2M1_MAX, E2M1_MAX)))
    return (q * scale).astype(np.float32).reshape(np.shape(x))
