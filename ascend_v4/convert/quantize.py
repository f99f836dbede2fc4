"""Number formats of the converted checkpoints, and fast exact decoders of the release's formats.

int8 (w8a8, "A8dynW8" on 910B): symmetric, per output channel (row of an [out, in] weight).
    scale[r] = max|w[r, :]| / 127 (float32); q = clip(rint(w / scale[r]), -127, 127) as int8.
    w ~= q * scale[r]. The code -128 is never used, so the grid is symmetric. Activations are
    quantised per token at run time (DynamicQuant); nothing about them is stored.
int4 (w4a8, routed experts): symmetric, per output channel, range -7..7 (the code -8 is never
    written): scale[r] = max|w[r, :]| / 7; q = clip(rint(w / scale[r]), -7, 7).
    Packed two per byte, stored as int8 [out, in/2]: the LOW nibble holds the EVEN column (2j), the
    HIGH nibble the ODD column (2j+1), each as a 4-bit two's-complement value - the same nibble
    order as the release's MXFP4 experts (docs/formats.md). Unpack: lo = ((b & 0xF) ^ 8) - 8, hi = (b >> 4
    as signed), i.e. arithmetic shift of the int8 byte.
All-zero rows get scale 1.0 and q = 0 (nothing downstream divides by zero).
Max error per element: |w - q * scale| <= scale / 2 (+ float32 rounding of w / scale, < 1e-5 scale).

BF16 decoders: FP8 E4M3 x E8M0 (128x128 blocks) and MXFP4 E2M1 x E8M0 (1x32 blocks) values are
exactly representable in BF16 whenever the block scale keeps them in BF16's normal range (every
realistic scale: E8M0 codes 10..246 for FP8, 2..252 for FP4). For those blocks the decoders use one
65536-entry table lookup per element (or per FP4 byte pair) instead of float arithmetic; any chunk
touching another scale goes through an exact float64 path that counts NaN, Inf and values BF16
cannot hold exactly, so the caller can refuse them with numbers.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ascend_v4.checkpoint import formats as F

INT8_QMAX = 127
INT4_QMAX = 7
INT4_NIBBLE_ORDER = "low nibble = even column (2j), high nibble = odd column (2j+1); 4-bit two's complement"


# -------------------------------------------------------------------------- int8 / int4 ----------
def _row_scale(w: np.ndarray, qmax: int) -> np.ndarray:
    amax = np.max(np.abs(w), axis=-1) if w.shape[-1] else np.zeros(w.shape[:-1], np.float32)
    return _scale_of_amax(amax, qmax)


def _scale_of_amax(amax: np.ndarray, qmax: int) -> np.ndarray:
    s = (np.asarray(amax, np.float32) / np.float32(qmax)).astype(np.float32)
    s[amax == 0] = 1.0
    tiny = np.finfo(np.float32).tiny
    s[(amax > 0) & (s < tiny)] = tiny
    return s


def _quant(w: np.ndarray, qmax: int, scale=None) -> Tuple[np.ndarray, np.ndarray]:
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise ValueError(f"per-channel quantisation wants a 2-D [out, in] weight, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError(f"per-channel quantisation: {int((~np.isfinite(w)).sum())} non-finite values")
    s = _row_scale(w, qmax) if scale is None else np.asarray(scale, np.float32)
    q = np.rint(w / s[:, None])
    np.clip(q, -qmax, qmax, out=q)
    return q.astype(np.int8), s


def quant_int8(w, scale=None) -> Tuple[np.ndarray, np.ndarray]:
    """float [out, in] -> (int8 [out, in], float32 scale [out]); symmetric per output channel."""
    return _quant(w, INT8_QMAX, scale)


def dequant_int8(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    return (np.asarray(q, np.float32) * np.asarray(s, np.float32)[:, None]).astype(np.float32)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """int values in [-8, 7], [..., 2n] -> int8 [..., n]: two's-complement nibbles, low = even column, high = odd."""
    return F.pack_nibbles(np.asarray(q).astype(np.int8))


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """int8 [..., n] -> int8 [..., 2n] with values in [-8, 7] (inverse of pack_int4)."""
    u = F.unpack_nibbles(packed).view(np.int8)
    return (u ^ np.int8(8)) - np.int8(8)          # sign-extend the 4-bit value


def quant_int4(w, scale=None) -> Tuple[np.ndarray, np.ndarray]:
    """float [out, in] -> (packed int8 [out, in/2], float32 scale [out]); values -7..7 per channel."""
    q, s = _quant(w, INT4_QMAX, scale)
    return pack_int4(q), s


def quant_bf16_rows(bits: np.ndarray, qmax: int) -> Tuple[np.ndarray, np.ndarray]:
    """The converter's fast path: finite BF16 bit patterns [rows, in] -> (int8 [rows, in], float32
    scale [rows]), the same values as quant_int8 / the unpacked quant_int4 of the decoded floats."""
    bits = np.asarray(bits).view(np.uint16)
    if bits.shape[1]:
        amax = bf16_to_f32((bits & np.uint16(0x7FFF)).max(axis=1))    # |bf16| orders like its bits
    else:
        amax = np.zeros(bits.shape[0], np.float32)
    s = _scale_of_amax(amax, qmax)
    w = bits.astype(np.uint32)
    np.left_shift(w, np.uint32(16), out=w)
    w = w.view(np.float32)
    np.divide(w, s[:, None], out=w)
    np.rint(w, out=w)              # |w / s| <= qmax (1 + 2^-23): rint never goes past qmax
    return w.astype(np.int8), s


def dequant_int4(packed: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Packed int4 [o, i/2] with one scale per row ([o]) or per group of input columns ([o, i/G])."""
    q = unpack_int4(packed).astype(np.float32)
    s = np.asarray(s, np.float32)
    if s.ndim == 1:
        return (q * s[:, None]).astype(np.float32)
    o, i = q.shape
    return (q.reshape(o, s.shape[1], i // s.shape[1]) * s[..., None]).reshape(o, i)


# -------------------------------------------------------------------------- BF16 tables ----------
_TABLES = {}


def _bf16_exact_bits(v64: np.ndarray):
    """float64 values -> (bf16 bits uint16, exact bool): exact iff finite in f32, f32 == f64 and the
    f32's low 16 bits are zero."""
    with np.errstate(over="ignore", invalid="ignore"):
        f32 = v64.astype(np.float32)
    bits = f32.view(np.uint32)
    exact = np.isfinite(f32) & (f32.astype(np.float64) == v64) & ((bits & np.uint32(0xFFFF)) == 0)
    return (bits >> np.uint32(16)).astype(np.uint16), exact


def _fp8_tables():
    if "fp8" not in _TABLES:
        code_vals = F.e4m3_decode(np.arange(256, dtype=np.uint8)).astype(np.float64)
        s_vals = np.ldexp(1.0, np.arange(256) - 127).astype(np.float64)
        v = s_vals[:, None] * code_vals[None, :]                       # [scale, code]
        bits, exact = _bf16_exact_bits(v)
        nan_code = np.isnan(code_vals)                                  # 0x7F and 0xFF
        bits[:, 0x7F], bits[:, 0xFF] = 0x7FC0, 0xFFC0
        ok = (exact | nan_code[None, :]).all(axis=1)
        ok[255] = False                                                # E8M0 NaN scale
        _TABLES["fp8"] = (np.ascontiguousarray(bits.reshape(-1)), ok)
    return _TABLES["fp8"]


def _fp4_tables():
    if "fp4" not in _TABLES:
        byte = np.arange(256)
        lo, hi = F.E2M1_VALUES[byte & 0xF].astype(np.float64), F.E2M1_VALUES[byte >> 4].astype(np.float64)
        s_vals = np.ldexp(1.0, np.arange(256) - 127).astype(np.float64)
        blo, elo = _bf16_exact_bits(s_vals[:, None] * lo[None, :])
        bhi, ehi = _bf16_exact_bits(s_vals[:, None] * hi[None, :])
        pair = blo.astype(np.uint32) | (bhi.astype(np.uint32) << np.uint32(16))
        ok = (elo & ehi).all(axis=1)
        ok[255] = False
        _TABLES["fp4"] = (np.ascontiguousarray(pair.reshape(-1).astype("<u4")), ok)
    return _TABLES["fp4"]


_SWAR = {  # per lane: exponent mask, the carry that overflows into the lane's top bit iff all ones, top bit
    2: (np.uint64(0x7F807F807F807F80), np.uint64(0x0080008000800080), np.uint64(0x8000800080008000)),
    1: (np.uint64(0x7F7F7F7F7F7F7F7F), np.uint64(0x0101010101010101), np.uint64(0x8080808080808080)),
}


def _any_special(a: np.ndarray, lane: int) -> bool:
    """Any bf16 lane with an all-ones exponent (lane=2), or any E4M3 byte with low 7 bits all ones
    (lane=1, the NaN codes)? Checks 8 bytes per operation; conservative fallback for odd sizes."""
    flat = np.ascontiguousarray(a).reshape(-1)
    if flat.nbytes % 8:
        return True
    m, c, top = _SWAR[lane]
    w = flat.view(np.uint64)
    return bool(np.any(((w & m) + c) & top))


_SCRATCH = {}


def _scratch(shape) -> np.ndarray:
    """A reusable uint16 index buffer (decoding runs on one thread per process): writing the
    (scale << 8 | code) indices into warm memory is what keeps the lookups fast."""
    buf = _SCRATCH.get(shape)
    if buf is None:
        if len(_SCRATCH) > 16:
            _SCRATCH.clear()
        buf = _SCRATCH[shape] = np.empty(shape, np.uint16)
    return buf


class Counts:
    """Non-finite and inexact values seen while decoding one tensor (summed over its chunks)."""
    __slots__ = ("nan", "inf", "inexact")

    def __init__(self):
        self.nan = self.inf = self.inexact = 0

    def add_bits(self, bits: np.ndarray) -> None:
        """Count NaN / Inf among bf16 bit patterns (a 4-lanes-per-word pre-check skips clean chunks)."""
        if not _any_special(bits, 2):
            return
        special = (bits & np.uint16(0x7F80)) == np.uint16(0x7F80)
        n = int(np.count_nonzero(special))
        if n:
            inf = int(np.count_nonzero(special & ((bits & np.uint16(0x7F)) == 0)))
            self.inf += inf
            self.nan += n - inf

    def add_f32(self, x: np.ndarray) -> None:
        self.nan += int(np.count_nonzero(np.isnan(x)))
        self.inf += int(np.count_nonzero(np.isinf(x)))

    def message(self) -> str:
        parts = []
        if self.nan or self.inf:
            parts.append(f"{self.nan} NaN and {self.inf} Inf values after dequantisation")
        if self.inexact:
            parts.append(f"{self.inexact} values that BF16 cannot hold exactly (block scale outside BF16's range)")
        return "; ".join(parts)

    def bad(self) -> bool:
        return bool(self.nan or self.inf or self.inexact)


def _generic_to_bf16(v64: np.ndarray, counts: Counts) -> np.ndarray:
    nan = np.isnan(v64)
    with np.errstate(over="ignore", invalid="ignore"):
        f32 = v64.astype(np.float32)
    counts.nan += int(np.count_nonzero(nan))
    counts.inf += int(np.count_nonzero(np.isinf(f32)))
    bits, exact = _bf16_exact_bits(v64)
    counts.inexact += int(np.count_nonzero(~exact & np.isfinite(f32)))
    return bits


def fp8_block_to_bf16(q: np.ndarray, scale: np.ndarray, row0: int, counts: Counts, block=128) -> np.ndarray:
    """Rows [row0, row0 + len(q)) of an FP8 weight (E4M3 codes, full width) with its whole E8M0 block
    scale tensor -> BF16 bits uint16, exact. Non-finite / inexact values are counted into `counts`.
    block: b for b×b blocks (V4 128, V4.1 32), or (br, bc) - (1, 32) for V4.1's Engram rows, where `scale` may
    be just the rows' own scales with row0 = 0."""
    rb, block = (block, block) if np.ndim(block) == 0 else block
    q = np.asarray(q).view(np.uint8)
    rows, cols = q.shape
    s = np.asarray(scale).view(np.uint8)
    srow = s[(np.arange(row0, row0 + rows) // rb)]                     # [rows, ncb]
    table, ok = _fp8_tables()
    if ok[srow].all():
        s16 = srow.astype(np.uint16) << np.uint16(8)
        if cols % block == 0 and srow.shape[1] * block == cols:
            idx = _scratch((rows, cols // block, block))
            np.bitwise_or(s16[:, :, None], q.reshape(rows, cols // block, block), out=idx)
        else:
            idx = _scratch((rows, cols))
            np.bitwise_or(s16[:, np.arange(cols) // block], q, out=idx)
        out = table.take(idx, mode="clip").reshape(rows, cols)
        if _any_special(q, 1):
            counts.nan += int(np.count_nonzero((q & np.uint8(0x7F)) == np.uint8(0x7F)))
        return out
    S = srow[:, np.arange(cols) // block]
    v = F.e4m3_decode(q).astype(np.float64) * np.ldexp(1.0, S.astype(np.int64) - 127)
    v[S == 255] = np.nan
    return _generic_to_bf16(v, counts)


def mxfp4_to_bf16(packed: np.ndarray, scale: np.ndarray, counts: Counts, block: int = 32) -> np.ndarray:
    """MXFP4 rows (packed int8 [rows, in/2], E8M0 [rows, in/32]) -> BF16 bits uint16 [rows, in], exact."""
    p = np.asarray(packed).view(np.uint8)
    s = np.asarray(scale).view(np.uint8)
    rows, half = p.shape
    cols = 2 * half
    if cols % block or s.shape != (rows, cols // block):
        raise ValueError(f"mxfp4_to_bf16: weight [{rows}, {cols}] needs scale [{rows}, {cols // block}], "
                         f"got {list(s.shape)}")
    table, ok = _fp4_tables()
    if ok[s].all():
        idx = _scratch((rows, cols // block, block // 2))
        np.bitwise_or((s.astype(np.uint16) << np.uint16(8))[:, :, None], p.reshape(rows, cols // block, block // 2),
                      out=idx)
        return table.take(idx, mode="clip").view("<u2").reshape(rows, cols)
    codes = F.fp4_unpack(p)
    v = (F.e2m1_decode(codes).astype(np.float64).reshape(rows, cols // block, block)
         * np.ldexp(1.0, s.astype(np.int64) - 127)[..., None])
    v[np.broadcast_to((s == 255)[..., None], v.shape)] = np.nan
    return _generic_to_bf16(v.reshape(rows, cols), counts)


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits).view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


# ------------------------------------------------------------------ serving (msModelSlim) int4 ----------
# W4A8 in the serving layout: int4 per group of `group` input columns (group = in: per channel), the
# full signed int4 range -8..7, scale = ratio * amax(group) / 7 with the ratio that minimises the
# group's squared error searched over CLIP_RATIOS (a clip-ratio search per group; 1.0 = absmax).
# The vendor's per-group antiquant path multiplies weight_scale * weight_scale_second and rounds the
# product to FP16 before the kernel uses it, so every group scale we write is an FP16 value.
INT4_QMIN = -8
CLIP_RATIOS = np.round(np.linspace(0.5, 1.3, 33), 6).astype(np.float32)
SERVING_GROUPS = (0, 32, 64, 128, 256)        # 0 = per output channel


def fp16_scale(s: np.ndarray) -> np.ndarray:
    """Scales as the kernel sees them: rounded to FP16 (kept >= the smallest FP16 normal), back in float32."""
    s = np.asarray(s, np.float32)
    return np.maximum(s, np.float32(2.0 ** -14)).astype(np.float16).astype(np.float32)


def int4_codes(w: np.ndarray, s: np.ndarray, group: int) -> np.ndarray:
    """q = clip(rint(w / s), -8, 7) with one scale per `group` input columns: w [o, i], s [o, i/group]."""
    o, i = w.shape
    wg = np.asarray(w, np.float32).reshape(o, i // group, group)
    q = np.rint(wg / np.asarray(s, np.float32)[..., None])
    np.clip(q, INT4_QMIN, INT4_QMAX, out=q)
    return q.astype(np.int8).reshape(o, i)


def int4_group_search(w, group: int, ratios=CLIP_RATIOS) -> Tuple[np.ndarray, np.ndarray]:
    """float [o, i] -> (int8 codes [o, i] in -8..7, float32 FP16-exact scales [o, i/group]).

    Per group: the scale ratio * amax / 7 (ratio from `ratios`) with the least squared error of
    w - q * scale; all-zero groups get scale 1. group = i quantises per output channel."""
    w = np.asarray(w, np.float32)
    o, i = w.shape
    if group <= 0 or i % group:
        raise ValueError(f"int4 group size {group} does not divide the input dimension {i}")
    wg = w.reshape(o, i // group, group)
    amax = np.abs(wg).max(axis=-1)
    best_err = np.full(amax.shape, np.inf, np.float64)
    best = np.ones(amax.shape, np.float32)
    for r in np.asarray(ratios, np.float32):
        s = fp16_scale(amax * r / np.float32(INT4_QMAX))
        q = np.clip(np.rint(wg / s[..., None]), INT4_QMIN, INT4_QMAX)
        d = wg - q * s[..., None]
        err = np.einsum("ogk,ogk->og", d, d, dtype=np.float64)
        better = err < best_err
        best_err[better] = err[better]
        best[better] = s[better]
    best[amax == 0] = 1.0
    return int4_codes(w, best, group), best


def _int4_fp4_tables(ratios):
    """For a group whose largest |code| is mags[m], under scale = fp16(mags[m] * ratio_k / 7) in block units:
    squared error [8, K, 16] (float64, block-scale² units) and int4 code [8, K, 16] of each of the 16 FP4 codes -
    computed with the same float32 division / rint / clip as int4_codes."""
    vals = F.E2M1_VALUES.astype(np.float32)                          # 16 code values
    mags = np.abs(vals[:8])
    rat = np.asarray(ratios, np.float32)
    err = np.zeros((8, len(rat), 16), np.float64)
    code = np.zeros((8, len(rat), 16), np.int8)
    for m in range(8):
        for k, r in enumerate(rat):
            c = fp16_scale(np.float32(mags[m]) * r / np.float32(INT4_QMAX)) if mags[m] > 0 else np.float32(1)
            q = np.clip(np.rint(vals / c), INT4_QMIN, INT4_QMAX)
            err[m, k] = (vals.astype(np.float64) - q * np.float64(c)) ** 2
            code[m, k] = q.astype(np.int8)
    return err, code


_INT4_FP4_TABLE = {}


def int4_group32_from_fp4(packed: np.ndarray, e8m0: np.ndarray, ratios=CLIP_RATIOS) -> Tuple[np.ndarray, np.ndarray]:
    """The same result as int4_group_search(decoded weights, 32) for MXFP4 rows, without floats per element:
    a group of 32 is one FP4 block, w = 2^e * value(code), and scale = 2^e * c with c = fp16(max|value| *
    ratio / 7), so w / scale = value / c exactly (powers of two cancel) and both the error of every candidate
    and the int4 code depend only on the codes: one bincount of the 16 codes per group, a [groups, 16] x [16, K]
    product per max-code class, then a table lookup per element. Groups where a candidate scale would leave
    FP16's normal range (the identity fails there) are searched on their decoded floats instead.
    Returns (codes -8..7 int8 [o, i], float32 scales [o, i/32])."""
    key = tuple(np.asarray(ratios, np.float32).tolist())
    if key not in _INT4_FP4_TABLE:
        _INT4_FP4_TABLE.clear()
        _INT4_FP4_TABLE[key] = _int4_fp4_tables(ratios)
    err_t, code_t = _INT4_FP4_TABLE[key]
    K = err_t.shape[1]
    codes = F.fp4_unpack(np.asarray(packed).view(np.uint8))            # [o, i] uint8 0..15
    o, i = codes.shape
    ng = o * (i // 32)
    s8 = np.asarray(e8m0).view(np.uint8).reshape(ng)
    cg = codes.reshape(ng, 32)
    gidx = np.arange(ng, dtype=np.int32)[:, None] * np.int32(16)
    counts = np.bincount((gidx + cg).ravel(), minlength=ng * 16).reshape(ng, 16).astype(np.float32)
    mmax = (cg & 7).max(axis=1)
    pick = np.zeros(ng, np.int64)
    for m in np.unique(mmax):
        sel = mmax == m
        pick[sel] = np.argmin(counts[sel] @ err_t[m].T.astype(np.float32), axis=1)   # counts <= 32: exact sums
    mags = np.abs(F.E2M1_VALUES[:8]).astype(np.float32)
    rat = np.asarray(ratios, np.float32)[pick]
    block = np.ldexp(np.float32(1), s8.astype(np.int32) - 127).astype(np.float32)
    s = fp16_scale(block * mags[mmax] * rat / np.float32(INT4_QMAX))
    s[mmax == 0] = 1.0
    base = ((mmax.astype(np.int64) * K + pick) * 16).astype(np.int32)
    q = code_t.reshape(-1)[base[:, None] + cg]                                      # [ng, 32] int8
    # groups where some candidate scale leaves FP16's normal range (clamped / overflowing): the tables'
    # identity fails there, so those groups are searched on their decoded floats
    top = block * mags[mmax]
    odd = (mmax > 0) & ((top * np.float32(np.min(ratios) / INT4_QMAX) < np.float32(2.0 ** -14) * 2)
                        | (top * np.float32(np.max(ratios) / INT4_QMAX) > np.float32(60000)))
    if odd.any():
        w = F.e2m1_decode(cg[odd]).astype(np.float32) * block[odd, None]
        q[odd], s_odd = int4_group_search(w, 32, ratios)
        s[odd] = s_odd[:, 0]
    return q.reshape(o, i), s.reshape(o, i // 32)


def pack_int4_out(q: np.ndarray) -> np.ndarray:
    """msModelSlim W4A8 packing: int4 codes [o, i] -> int8 [o/2, i]; byte [j, k] holds row 2j in the low
    nibble and row 2j+1 in the high nibble (two output channels per byte)."""
    q = np.asarray(q)
    if q.shape[0] % 2:
        raise ValueError(f"pack_int4_out needs an even number of output rows, got shape {q.shape}")
    u = q.astype(np.int8).view(np.uint8) & np.uint8(0xF)
    return (u[0::2] | (u[1::2] << np.uint8(4))).view(np.int8)


def unpack_int4_out(packed: np.ndarray) -> np.ndarray:
    """int8 [o/2, i] -> int4 codes int8 [o, i] (inverse of pack_int4_out)."""
    p = np.asarray(packed).view(np.int8)
    out = np.empty((2 * p.shape[0],) + p.shape[1:], np.int8)
    lo = (p.view(np.uint8) & np.uint8(0xF)).view(np.int8)
    out[0::2] = (lo ^ np.int8(8)) - np.int8(8)
    out[1::2] = p >> np.int8(4)
    return out


def int4_scale_bias(q: np.ndarray, s: np.ndarray, parts: int) -> np.ndarray:
    """The W4A8 grouped matmul's assistance bias: 8 * sum_k q[n, k] * scale[n, k], float32 [o, parts], the
    input dim split into `parts` equal chunks (1 for gate/up; 16 for down, so a TP split of the input
    dim can take its share)."""
    o, i = q.shape
    g = i // s.shape[1]
    v = q.astype(np.float64).reshape(o, s.shape[1], g) * s.astype(np.float64)[..., None]
    return (8.0 * v.reshape(o, parts, i // parts).sum(axis=-1)).astype(np.float32)


def int8_group32_exact(packed: np.ndarray, e8m0: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The exact path: MXFP4 [o, i/2] + E8M0 [o, i/32] -> (int8 [o, i], float32 [o, i/32]). Every FP4 value
    times 2 is an integer in -12..12, so q = 2 * value and scale = 2^(e-1) reproduce the weights exactly."""
    codes = F.fp4_unpack(np.asarray(packed).view(np.uint8))
    q = (2 * F.e2m1_decode(codes)).astype(np.int8)
    s = np.ldexp(np.float32(1), np.asarray(e8m0).view(np.uint8).astype(np.int32) - 128).astype(np.float32)
    return q, s


# ------------------------------------------------------------------ activations (run time) --------------
def dynamic_quant_int8(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The vendor's DynamicQuant (npu_dynamic_quant, symmetric): per token (last dim) scale = max|x| / 127,
    q = rint(x / scale) (round half to even) in -127..127; all-zero tokens get scale 1. Returns (q as
    float64, scale float64 [..., 1]); x ~= q * scale."""
    x = np.asarray(x, np.float64)
    amax = np.max(np.abs(x), axis=-1, keepdims=True) if x.shape[-1] else np.zeros(x.shape[:-1] + (1,))
    s = (amax / INT8_QMAX).astype(np.float32).astype(np.float64)     # the kernel's scale is float32
    s[amax == 0] = 1.0
    q = np.clip(np.rint(x / s), -INT8_QMAX, INT8_QMAX)
    return q, s
