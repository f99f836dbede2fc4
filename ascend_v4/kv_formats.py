"""Storage formats of the serving cache's KV rows, as graph-mode encoders / decoders (ascend_v4/serve/cache.py).

A KV buffer is a handle `(fmt, buffer ids...)` into the cache's tuple of Parameters (stored 2-D [B·R, width]):

  F32      (F32, id)                 float32 rows
  INT8     (INT8, q, rope, scale)    the `nope` leading dims int8 with one float32 scale per row (amax / 127), the
                                     RoPE dims float32 (the 910B layout; V4 and V4.1 alike)
  FP8      (FP8, codes, exps)        E4M3 codes of every dim + one E8M0 scale per 32 values, the scale
                                     2^ceil(log2(max(amax, 1e-4) / 448)) (DeepSeek-V4.1's window KV)
  FP4_E4M3 (FP4_E4M3, packed, sc)    E2M1 codes two per byte (low nibble = even dim) + one E4M3 scale per 16
                                     values, E4M3_RNE(max(amax, 6·2^-9) / 6) (DeepSeek-V4.1's compressed KV)
  FP4_E8M0 (FP4_E8M0, packed, exps)  E2M1 codes two per byte + one E8M0 scale per 32 values,
                                     2^ceil(log2(max(amax, 6·2^-126) / 6)) (DeepSeek-V4.1's index keys)

The FP8 / FP4 encodings are those of docs/deepseek-v4.1.md ("Serving", KV formats): every code and scale is the
one the NumPy codecs of ascend_v4/checkpoint/formats.py give (act_quant_fp8, act_quant_fp4_e4m3, and the
indexer's fp4_act_quant), bit for bit. The formats' value tables come from those codecs: a code is the index of
the nearest table value (ties to the even code; a value past the largest saturates to it), found by a sorted
search over the midpoints, and a power-of-two scale is the first E8M0 code whose scale times the format maximum
reaches the amax (exact comparisons; no logarithm). Decoding is a table lookup.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import ops, Tensor

from .checkpoint.formats import (E2M1_MAX, E2M1_VALUES, E4M3_MAX, FP4_AMAX_FLOOR, FP8_AMAX_FLOOR, e4m3_decode,
                                 e8m0_decode)

F32, INT8, FP8, FP4_E4M3, FP4_E8M0 = 0, 1, 2, 3, 4
INT8_MAX = 127.0
FP8_BLOCK, FP4_KV_BLOCK, FP4_KEY_BLOCK = 32, 16, 32
FP4_KV_AMAX_FLOOR = E2M1_MAX * 2.0 ** -9          # keeps a zero group's E4M3 scale non-zero


def _mids(values: np.ndarray) -> np.ndarray:
    """Midpoints of consecutive non-negative table values (exact in float32: one more mantissa bit)."""
    v = values.astype(np.float64)
    m = (v[:-1] + v[1:]) / 2
    assert np.array_equal(m.astype(np.float32).astype(np.float64), m)
    return m.astype(np.float32)


_E4M3_POS = e4m3_decode(np.arange(0x7F, dtype=np.uint8))                  # codes 0x00..0x7E: 0 .. 448
_E2M1_POS = E2M1_VALUES[:8]                                               # codes 0..7: 0 .. 6
_E4M3_MID, _E2M1_MID = _mids(_E4M3_POS), _mids(_E2M1_POS)
_E4M3_TAB = e4m3_decode(np.arange(256, dtype=np.uint8))
_E8M0_TAB = e8m0_decode(np.arange(256, dtype=np.uint8))
# first E8M0 code c with 2^(c-127)·fmt_max >= amax: thresholds 2^(c-127)·fmt_max for c = 0..254 (exact)
with np.errstate(over="ignore"):           # the top steps are +inf in float32: nothing reaches them
    _FP8_STEPS = (np.ldexp(1.0, np.arange(255) - 127) * E4M3_MAX).astype(np.float32)
    _FP4_STEPS = (np.ldexp(1.0, np.arange(255) - 127) * E2M1_MAX).astype(np.float32)


def fmt_name(fmt: int) -> str:
    return ("float32", "int8", "fp8_e4m3", "fp4_e2m1_e4m3", "fp4_e2m1_e8m0")[fmt]


def _nearest(a, mids):
    """a >= 0 float32 -> int32 index of the nearest table value, ties to the even index, saturating."""
    lo = ops.searchsorted(mids, a)                        # midpoints strictly below a
    hi = ops.searchsorted(mids, a, right=True)            # midpoints <= a
    tie = hi > lo
    return lo + ops.logical_and(tie, lo % 2 == 1).astype(ms.int32)


def _negative(x):
    """x < 0. The NumPy codecs keep the sign bit of an exact −0.0 input (code 0x80 / 0x8); MindSpore's CPU ops
    cannot see it (no bitcast, signbit(−0.0) is False), so −0.0 is stored as +0 — the same value."""
    return x < 0


def e4m3_codes(x):
    """float32 -> int32 E4M3 codes (RNE, saturating at ±448)."""
    mag = _nearest(ops.abs(x), Tensor(_E4M3_MID))
    return mag + 128 * _negative(x).astype(ms.int32)


def e2m1_codes(x):
    """float32 (no NaN) -> int32 E2M1 codes (RNE, saturating at ±6)."""
    mag = _nearest(ops.abs(x), Tensor(_E2M1_MID))
    return mag + 8 * _negative(x).astype(ms.int32)


def _lookup(table: np.ndarray, codes):
    return ops.gather(Tensor(table), codes.astype(ms.int32), 0)


def e4m3_values(codes):
    return _lookup(_E4M3_TAB, codes)


def e2m1_values(codes):
    return _lookup(E2M1_VALUES, codes)


def e8m0_values(codes):
    return _lookup(_E8M0_TAB, codes)


def _pow2_code(amax, steps):
    """E8M0 code of the scale 2^ceil(log2(amax / fmt_max)) (amax > 0, float32)."""
    return ops.searchsorted(Tensor(steps), amax)


def _blocks(x, block):
    w = x.shape[-1]
    if w % block:
        raise ValueError(f"a {w}-wide KV row does not split into blocks of {block}; the FP8 / FP4 cache formats "
                         f"need a width divisible by {block} (use kv_format 'int8' or 'float32')")
    return x.reshape(x.shape[:-1] + (w // block, block))


def _amax(xb, floor):
    a = ops.amax(ops.abs(xb), -1, True)
    return ops.maximum(a, ops.full_like(a, floor))


def _pack(codes):
    """int32 E2M1 codes [..., w] -> uint8 [..., w / 2], low nibble = even dim."""
    c = codes.reshape(codes.shape[:-1] + (codes.shape[-1] // 2, 2))
    return (c[..., 0] + 16 * c[..., 1]).astype(ms.uint8)


def _unpack(packed):
    p = packed.astype(ms.int32)
    return ops.stack([p % 16, p // 16], -1).reshape(packed.shape[:-1] + (packed.shape[-1] * 2,))


def encode(x, fmt: int, nope: int = 0) -> tuple:
    """float32 rows [..., w] -> the stored parts of format fmt (nope: INT8's int8 width)."""
    if fmt == F32:
        return (x,)
    if fmt == INT8:
        head = x[..., :nope]
        amax = ops.amax(ops.abs(head), -1, True)
        scale = ops.maximum(amax, ops.full_like(amax, 1e-12)) / INT8_MAX
        q = ops.clamp(ops.round(head / scale), -INT8_MAX, INT8_MAX)
        return (q.astype(ms.int8), x[..., nope:], scale)
    if fmt == FP8:
        xb = _blocks(x, FP8_BLOCK)
        e = _pow2_code(_amax(xb, FP8_AMAX_FLOOR), _FP8_STEPS)                  # [..., n, 1]
        v = ops.clamp(xb / e8m0_values(e), -E4M3_MAX, E4M3_MAX)
        return (e4m3_codes(v).reshape(x.shape).astype(ms.uint8), e.squeeze(-1).astype(ms.uint8))
    if fmt == FP4_E4M3:
        xb = _blocks(x, FP4_KV_BLOCK)
        sc = e4m3_codes(_amax(xb, FP4_KV_AMAX_FLOOR) / E2M1_MAX)                 # float32 division, E4M3 RNE
        v = ops.clamp(xb / e4m3_values(sc), -E2M1_MAX, E2M1_MAX)
        return (_pack(e2m1_codes(v).reshape(x.shape)), sc.squeeze(-1).astype(ms.uint8))
    if fmt == FP4_E8M0:
        xb = _blocks(x, FP4_KEY_BLOCK)
        e = _pow2_code(_amax(xb, FP4_AMAX_FLOOR), _FP4_STEPS)
        v = ops.clamp(xb / e8m0_values(e), -E2M1_MAX, E2M1_MAX)
        return (_pack(e2m1_codes(v).reshape(x.shape)), e.squeeze(-1).astype(ms.uint8))
    raise ValueError(f"unknown KV format {fmt}")


def decode(parts: tuple, fmt: int):
    """The stored parts of format fmt -> float32 rows [..., w]."""
    if fmt == F32:
        return parts[0]
    if fmt == INT8:
        q, rope, scale = parts
        return ops.concat([q.astype(ms.float32) * scale, rope], -1)
    codes, sc = parts
    if fmt == FP8:
        v, scale, block = e4m3_values(codes), e8m0_values(sc), FP8_BLOCK
    elif fmt == FP4_E4M3:
        v, scale, block = e2m1_values(_unpack(codes)), e4m3_values(sc), FP4_KV_BLOCK
    elif fmt == FP4_E8M0:
        v, scale, block = e2m1_values(_unpack(codes)), e8m0_values(sc), FP4_KEY_BLOCK
    else:
        raise ValueError(f"unknown KV format {fmt}")
    vb = _blocks(v, block)
    return (vb * ops.expand_dims(scale, -1)).reshape(v.shape)


def fake_quant(x, fmt: int, nope: int = 0):
    """What a row reads back as from a buffer of format fmt (identity for float32)."""
    return x if fmt == F32 else decode(encode(x, fmt, nope), fmt)


def part_shapes(fmt: int, width: int, nope: int = 0) -> tuple:
    """(dtype name, width) of each stored part of a `width`-wide row."""
    if fmt == F32:
        return (("float32", width),)
    if fmt == INT8:
        return (("int8", nope), ("float32", width - nope), ("float32", 1))
    block = {FP8: FP8_BLOCK, FP4_E4M3: FP4_KV_BLOCK, FP4_E8M0: FP4_KEY_BLOCK}[fmt]
    if width % block:
        raise ValueError(f"a {width}-wide KV row does not split into blocks of {block}; the FP8 / FP4 cache formats "
                         f"need a width divisible by {block}")
    return (("uint8", width if fmt == FP8 else width // 2), ("uint8", width // block))


def row_bytes(fmt: int, width: int, nope: int = 0) -> int:
    return int(sum(np.dtype(d).itemsize * w for d, w in part_shapes(fmt, width, nope)))
