"""Block quantisers: error bounds, exact dequantisation, and byte-exact re-quantisation."""
import ml_dtypes
import numpy as np
import pytest
import torch

from ascend_v4.checkpoint import formats as F

RNG = np.random.default_rng(7)


def _e4m3(codes) -> np.ndarray:
    """Independent E4M3 decoder (ml_dtypes' float8_e4m3fn), never the codec under test."""
    return np.asarray(codes, np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)


def _e4m3_by_hand(code: int) -> float:
    """E4M3 (OCP, fn: no inf, 0x7F/0xFF NaN) from its bits: sign, 4-bit exponent (bias 7), 3-bit mantissa."""
    sign = -1.0 if code & 0x80 else 1.0
    e, m = (code >> 3) & 0xF, code & 0x7
    if e == 0xF and m == 0x7:
        return float("nan")
    return sign * (m / 8 * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))


def test_e4m3_codec_against_the_bit_layout():
    codes = np.arange(256, dtype=np.uint8)
    hand = np.array([_e4m3_by_hand(c) for c in range(256)], np.float32)
    np.testing.assert_array_equal(_e4m3(codes), hand)                  # the two independent decoders agree
    np.testing.assert_array_equal(F.e4m3_decode(codes), hand)          # and the codec matches them
    assert hand[0x7E] == 448 and hand[0x01] == 2.0 ** -9 and hand[0x08] == 2.0 ** -6


E2M1_BY_HAND = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float64)   # codes 0..7; bit 3 is the sign


def _e2m1(codes) -> np.ndarray:
    c = np.asarray(codes).astype(np.int64)
    return E2M1_BY_HAND[c & 7] * np.where(c & 8, -1.0, 1.0)


def _nibbles(packed) -> np.ndarray:
    """Packed FP4 bytes -> codes, low nibble = even column (the release layout)."""
    b = np.asarray(packed).view(np.uint8).astype(np.int64)
    out = np.empty(b.shape[:-1] + (2 * b.shape[-1],), np.int64)
    out[..., 0::2], out[..., 1::2] = b & 15, b >> 4
    return out


def _e8m0(s) -> np.ndarray:
    return np.exp2(np.asarray(s).astype(np.float64) - 127)


def _ceil_log2(x):
    m, e = np.frexp(np.asarray(x, np.float64))
    return e - (m == 0.5)


def _blocks(a: np.ndarray, b: int):
    """Yield (row block, col block, view) over possibly ragged b x b blocks."""
    for i in range(0, a.shape[0], b):
        for j in range(0, a.shape[1], b):
            yield i // b, j // b, a[i:i + b, j:j + b]


# ------------------------------------------------------------------------------ FP8 128x128 ----
def _halvable_e4m3(v: np.ndarray) -> bool:
    """Independent check (ml_dtypes): every value / 2 is an E4M3 value."""
    h = np.asarray(v, np.float32) * np.float32(0.5)
    return bool((h.astype(ml_dtypes.float8_e4m3fn).astype(np.float32) == h).all())


N_KINDS = 10


def _fp8_weights(shape=(300, 260)):
    """Blocks of many kinds: ordinary, tiny (< 1e-4 floor), all-zero, all -0, huge, exact 448*2^k,
    exact 224*2^k, amax/scale in (224, 232] (max rounds down to 224), and blocks whose codes are all
    even with max 448 (the two encodings with equal values)."""
    w = RNG.standard_normal(shape).astype(np.float32)
    kinds = []
    for bi, bj, blk in _blocks(w, 128):
        kind = len(kinds) % N_KINDS
        k = int(RNG.integers(-20, 20))
        blk /= np.abs(blk).max()
        if kind == 0:
            blk *= np.float32(RNG.uniform(1e-3, 1e3))
        elif kind == 1:
            blk *= np.float32(3e-5)
        elif kind == 2:
            blk[:] = 0
        elif kind == 3:
            blk[:] = -0.0
        elif kind == 4:
            blk *= np.float32(3e37)
        elif kind == 5:
            blk *= np.float32(448 * 2.0 ** k)
        elif kind == 6:
            blk *= np.float32(224 * 2.0 ** k)
        elif kind in (7, 8):
            blk *= np.float32(RNG.uniform(224.01, 232) * 2.0 ** k)
        else:                       # halvable codes only (|v| >= 2^-5 or 0), max exactly 448
            v = (blk * 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
            v[np.abs(v) < 2 ** -5] = 0
            v.flat[0] = 448
            blk[:] = v * np.float32(2.0 ** k)
        kinds.append(kind)
    return w, kinds


def test_fp8_block_error_bound_and_exact_dequant():
    w, _ = _fp8_weights()
    q, s = F.quant_fp8_block(w)
    assert q.dtype == np.uint8 and q.shape == w.shape and s.dtype == np.uint8 and s.shape == (3, 3)
    dq = F.dequant_fp8_block(q, s)
    scale = np.repeat(np.repeat(_e8m0(s), 128, 0), 128, 1)[: w.shape[0], : w.shape[1]]
    # half an E4M3 step: |w|/16 in the normal range, 2^-10 * scale in the subnormal range
    assert (np.abs(dq.astype(np.float64) - w) <= np.abs(w) / 16 + scale * 2.0 ** -10).all()
    # dequantisation is exact: it equals the float64 product
    exact = _e4m3(q).astype(np.float64) * scale
    assert np.array_equal(dq.astype(np.float64), exact)
    # and exactly representable in bf16, so official -> bf16 loses nothing
    assert np.array_equal(F.bf16_round(dq), dq)


def test_fp8_block_requant_is_byte_identical():
    w, kinds = _fp8_weights()
    q, s = F.quant_fp8_block(w)
    for dq in (F.dequant_fp8_block(q, s), F.bf16_round(F.dequant_fp8_block(q, s))):
        q2, s2 = F.quant_fp8_block(dq)
        assert np.array_equal(q2, q) and np.array_equal(s2, s)
    assert (q[np.signbit(w) & (w == 0)] == 0x80).all()          # -0.0 is kept as the -0 code


def test_fp8_block_canonical_vs_plain_rule():
    w, kinds = _fp8_weights()
    qc, sc = F.quant_fp8_block(w)
    qp, sp = F.quant_fp8_block(w, canonical=False)
    # same values always: canonical only picks the other encoding of identical values
    assert np.array_equal(F.dequant_fp8_block(qc, sc), F.dequant_fp8_block(qp, sp))
    vp = _e4m3(qp)
    for (bi, bj, _), kind in zip(_blocks(w, 128), kinds):
        blk = vp[bi * 128:(bi + 1) * 128, bj * 128:(bj + 1) * 128]
        coarse = np.abs(blk).max() == 448 and _halvable_e4m3(blk)
        assert coarse or kind != 9
        assert sc[bi, bj] == sp[bi, bj] + coarse
    # the plain rule is not idempotent: blocks whose max rounded to 224 come back as (2q, s/2)
    qp2, sp2 = F.quant_fp8_block(F.dequant_fp8_block(qp, sp), canonical=False)
    at224 = np.array([np.abs(vp[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]).max() == 224
                      for i, j, _ in _blocks(w, 128)]).reshape(sp.shape)
    assert at224.any() and np.array_equal(sp2 != sp, at224)


def test_fp8_roundtrip_exactly_when_predicted():
    """For an arbitrary (q, s) - e.g. an official checkpoint - quant(dequant(q, s)) == (q, s) holds
    exactly when re-deriving the scale from the block's values lands on the same exponent: with A the
    block's max |value| in scale units and k its exponent, k_p = ceil(log2(max(A*2^k, 1e-4)/448)),
    A_p = A*2^(k-k_p), and k == k_p + [A_p == 448 and all codes halve exactly]."""
    shape = (128 * 6 + 40, 128 * 5 + 3)                       # ragged edges
    nr, nc = -(-shape[0] // 128), -(-shape[1] // 128)
    q = np.zeros(shape, np.uint8)
    k = RNG.integers(-22, 30, (nr, nc))
    k[0, :3] = -22
    targets = RNG.choice(np.array([0x00, 0x01, 0x08, 0x70, 0x75, 0x76, 0x77, 0x78, 0x7D, 0x7E, 0x7E, 0x7E]), (nr, nc))
    targets[0, 0], targets[0, 1], targets[1, 0], targets[1, 1] = 0x76, 0x00, 0x00, 0x7E
    halvable_only = RNG.integers(0, 2, (nr, nc)).astype(bool)
    halvable_only[1, 1] = True
    for bi, bj, blk in _blocks(q, 128):
        c = int(targets[bi, bj])
        lo = 0x10 if halvable_only[bi, bj] and c >= 0x10 else 0
        mag = RNG.integers(lo, c + 1, blk.shape)
        mag[RNG.random(blk.shape) < 0.1] = 0                  # zeros halve too
        blk[:] = mag | (RNG.integers(0, 2, blk.shape) << 7)
        blk.flat[RNG.integers(blk.size)] = c | (int(RNG.integers(0, 2)) << 7)
    s = (k + 127).astype(np.uint8)
    v = _e4m3(q)
    q2, s2 = F.quant_fp8_block(F.dequant_fp8_block(q, s))
    seen = set()
    for bi, bj, blk in _blocks(q, 128):
        kk = int(k[bi, bj])
        A = _e4m3_by_hand(int(targets[bi, bj]))
        kp = int(_ceil_log2(max(A * 2.0 ** kk, 1e-4) / 448))
        vb = v[bi * 128:(bi + 1) * 128, bj * 128:(bj + 1) * 128] * np.float32(2.0 ** (kk - kp))
        predicted = kk == kp + (A * 2.0 ** (kk - kp) == 448 and _halvable_e4m3(vb))
        q2b = q2[bi * 128:(bi + 1) * 128, bj * 128:(bj + 1) * 128]
        same = s2[bi, bj] == s[bi, bj] and np.array_equal(q2b, blk)
        assert same == predicted, (bi, bj, hex(targets[bi, bj]), kk)
        seen.add((predicted, targets[bi, bj] == 0x7E))
    assert seen == {(True, True), (True, False), (False, True), (False, False)}
    # values always survive (a finer or equal scale is chosen), only the encoding may differ
    assert np.array_equal(F.dequant_fp8_block(q2, s2), F.dequant_fp8_block(q, s))
    # ... and re-using the source scales reproduces every block byte for byte
    q3, s3 = F.quant_fp8_block(F.dequant_fp8_block(q, s), scale=s)
    assert np.array_equal(q3, q) and np.array_equal(s3, s)


def test_fp8_block_rejects_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        F.quant_fp8_block(np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(ValueError, match="2-D"):
        F.quant_fp8_block(np.zeros(5))
    with pytest.raises(ValueError, match="scale"):
        F.dequant_fp8_block(np.zeros((200, 10), np.uint8), np.zeros((1, 1), np.uint8))


# ------------------------------------------------------------------------------ MXFP4 1x32 -----
def _fp4_weights(out=64, inp=256):
    w = RNG.standard_normal((out, inp)).astype(np.float32).reshape(out, inp // 32, 32)
    w /= np.abs(w).max(axis=-1, keepdims=True)
    k = RNG.integers(-30, 30, (out, inp // 32, 1))
    r = RNG.choice(np.array([3.2, 3.4, 3.49, 3.01, 4.0, 5.0, 5.9, 6.0, 3.0, 1.0, 0.1]), (out, inp // 32, 1))
    w *= (r * np.exp2(k)).astype(np.float32)
    w[0, 0] = 0
    w[0, 1] = -0.0
    w[1, 0] *= np.float32(1e-38)          # below the 6*2^-126 floor
    w[2, 0] = np.array([6, 4, 3, 2, 1, 0, -6, -4] * 4, np.float32) * np.float32(2.0 ** 5)   # all codes halve
    return w.reshape(out, inp)


def test_mxfp4_error_bound_exact_dequant_and_requant():
    w = _fp4_weights()
    q, s = F.quant_mxfp4(w)
    assert q.dtype == np.int8 and q.shape == (64, 128) and s.dtype == np.uint8 and s.shape == (64, 8)
    dq = F.dequant_mxfp4(q, s)
    scale = np.repeat(_e8m0(s), 32, axis=1)
    assert (np.abs(dq.astype(np.float64) - w) <= np.abs(w) / 4 + scale / 4).all()
    assert np.array_equal(dq.astype(np.float64), _e2m1(_nibbles(q)) * scale)
    assert np.array_equal(F.bf16_round(dq), dq)
    q2, s2 = F.quant_mxfp4(dq)
    assert np.array_equal(q2, q) and np.array_equal(s2, s)
    # canonical = plain rule in values; bytes differ only where a max-6 block halves exactly
    qp, sp = F.quant_mxfp4(w, canonical=False)
    assert np.array_equal(F.dequant_mxfp4(qp, sp), dq)
    vp = _e2m1(_nibbles(qp)).astype(np.float32).reshape(64, 8, 32)
    halves = np.abs(vp).max(-1) == 6
    halves &= ((vp / 2).astype(ml_dtypes.float4_e2m1fn).astype(np.float32) == vp / 2).all(-1)
    assert halves[2, 0] and np.array_equal(s, sp + halves)
    # the plain rule is not idempotent: blocks whose max rounded to 3 come back with half the scale
    qp2, sp2 = F.quant_mxfp4(F.dequant_mxfp4(qp, sp), canonical=False)
    amax3 = np.abs(vp).max(-1) == 3
    assert np.array_equal(sp2 != sp, amax3 & (sp > 1)) and amax3.any()


def test_mxfp4_roundtrip_exactly_when_predicted():
    out, nb = 48, 6
    codes = RNG.integers(0, 16, (out, nb, 32)).astype(np.uint8)
    target = RNG.choice(np.array([0, 1, 4, 5, 6, 7, 7, 7]), (out, nb))       # max magnitude code per block
    codes = np.where((codes & 7) > target[..., None], (target[..., None] | (codes & 8)), codes).astype(np.uint8)
    even = RNG.integers(0, 2, (out, nb)).astype(bool)                  # drop 0.5 / 1.5 so the block halves
    codes = np.where(even[..., None] & np.isin(codes & 7, [1, 3]), codes & 8, codes).astype(np.uint8)
    codes[..., 0] = target | (codes[..., 0] & 8)
    k = RNG.integers(-126, 100, (out, nb))
    k[:4] = -126
    s = (k + 127).astype(np.uint8)
    q = F.fp4_pack(codes.reshape(out, nb * 32))
    q2, s2 = F.quant_mxfp4(F.dequant_mxfp4(q, s))
    v = _e2m1(codes)
    A = _e2m1(target)
    kp = _ceil_log2(np.maximum(A * np.exp2(k), 6 * 2.0 ** -126) / 6)
    vp = v * np.exp2(k - kp)[..., None]
    halvable = ((vp / 2).astype(np.float32).astype(ml_dtypes.float4_e2m1fn).astype(np.float64) == vp / 2).all(-1)
    predicted = k == kp + ((A * np.exp2(k - kp) == 6) & halvable)
    same = (s2 == s) & (_nibbles(q2).reshape(out, nb, 32) == codes).all(-1)
    assert np.array_equal(same, predicted)
    top = target == 7
    assert (predicted & top).any() and (~predicted & top).any() and (~predicted & (target < 5)).any()
    assert np.array_equal(F.dequant_mxfp4(q2, s2), F.dequant_mxfp4(q, s))
    q3, s3 = F.quant_mxfp4(F.dequant_mxfp4(q, s), scale=s)
    assert np.array_equal(q3, q) and np.array_equal(s3, s)


def test_mxfp4_rejects_ragged_input():
    with pytest.raises(ValueError, match="multiple"):
        F.quant_mxfp4(np.zeros((2, 48), np.float32))


# ------------------------------------------------------------------------------ MXFP4 -> FP8 ----
def test_mxfp4_to_fp8_block_lossless():
    w = RNG.standard_normal((256 + 64, 384)).astype(np.float32) * np.exp2(RNG.integers(-4, 4, (320, 1)))
    q4, s4 = F.quant_mxfp4(w)
    q8, s8 = F.mxfp4_to_fp8_block(q4, s4)
    assert q8.shape == (320, 384) and s8.shape == (3, 3)
    assert np.array_equal(F.dequant_fp8_block(q8, s8), F.dequant_mxfp4(q4, s4))
    e4 = s4.astype(int) - 127
    assert s8[0, 0] - 127 == e4[:128, :4].max() - 6                  # max sub-block scale / 2^6


def test_mxfp4_to_fp8_block_spread_limit():
    codes = np.zeros((128, 128), np.uint8)
    codes[0, 0] = 7                       # 6 x 2^0 sets the block scale 2^-6
    codes[1, 32] = 1                      # 0.5 x 2^-14 -> 2^-9 relative: the smallest E4M3 subnormal
    codes[2, 64] = 3                      # 1.5 x 2^-14 -> 3 * 2^-9: still exact
    s = np.full((128, 4), 127, np.uint8)
    s[1, 1] = s[2, 2] = 127 - 14
    q8, s8 = F.mxfp4_to_fp8_block(F.fp4_pack(codes), s)
    assert s8[0, 0] == 127 - 6
    assert np.array_equal(F.dequant_fp8_block(q8, s8), F.dequant_mxfp4(F.fp4_pack(codes), s))
    s[2, 2] = 127 - 15                    # 1.5 x 2^-15 -> 1.5 * 2^-9: not an E4M3 value
    with pytest.raises(ValueError, match=r"element \[2, 64\].*not representable"):
        F.mxfp4_to_fp8_block(F.fp4_pack(codes), s)
    # scales so small that max/2^6 leaves E8M0's range: the new exponent is held at -127
    tiny = np.full((128, 4), 1, np.uint8)
    q8, s8 = F.mxfp4_to_fp8_block(F.fp4_pack(codes), tiny)
    assert s8[0, 0] == 0 and np.array_equal(F.dequant_fp8_block(q8, s8), F.dequant_mxfp4(F.fp4_pack(codes), tiny))


# ------------------------------------------------------------------------------ activations ----
def _torch_act_quant_fp8(x: np.ndarray, block: int, ue8m0: bool) -> np.ndarray:
    """Independent reference: the kernel's float32 arithmetic in torch, torch's E4M3 cast."""
    t = torch.from_numpy(x).unflatten(-1, (-1, block))
    amax = t.abs().amax(-1, keepdim=True).clamp_min(1e-4)
    s = amax * torch.tensor(1 / 448.0, dtype=torch.float32)
    if ue8m0:
        b = s.view(torch.int32)
        e = ((b >> 23) & 0xFF) - 127 + ((b & 0x7FFFFF) != 0).int()
        s = ((e + 127) << 23).view(torch.float32)
    q = (t / s).clamp(-448, 448).to(torch.float8_e4m3fn).float()
    return (q * s).flatten(-2).numpy()


@pytest.mark.parametrize("ue8m0", [True, False])
def test_act_quant_fp8_matches_reference(ue8m0):
    x = (RNG.standard_normal((3, 5, 512)) * np.exp2(RNG.integers(-20, 20, (3, 5, 1)))).astype(np.float32)
    x[0, 0, :128] = 0
    x[0, 1, :64] = 448.0 * 2 ** -3
    x = F.bf16_round(x)                                   # activations are bf16 in the reference
    got = F.act_quant_fp8(x, 128, ue8m0=ue8m0)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert np.array_equal(got.view(np.uint32), _torch_act_quant_fp8(x, 128, ue8m0).view(np.uint32))
    if ue8m0:
        assert np.array_equal(F.bf16_round(got), got)
    kv = F.act_quant_fp8(x[..., :448], 64)                 # KV: first 448 dims in 64-blocks
    assert kv.shape == (3, 5, 448)
    with pytest.raises(ValueError, match="multiple"):
        F.act_quant_fp8(x[..., :100], 128)


def test_act_quant_fp4_matches_reference():
    """The one FP4 activation QDQ (the indexer's, ops/attention/reference.py) against ml_dtypes' E2M1 rounding."""
    from ascend_v4.ops.attention.reference import fp4_act_quant
    x = (RNG.standard_normal((4, 256)) * np.exp2(RNG.integers(-30, 30, (4, 1)))).astype(np.float32)
    x[0, :32] = 0
    x[1, :32] = 3.0                                        # exact power-of-two boundary
    got = fp4_act_quant(x, 32)
    xb = x.reshape(4, 8, 32).astype(np.float64)
    amax = np.maximum(np.abs(xb).max(-1, keepdims=True), 6 * 2.0 ** -126)
    s = np.exp2(_ceil_log2(amax / 6))
    ref = np.clip(xb / s, -6, 6).astype(np.float32).astype(ml_dtypes.float4_e2m1fn).astype(np.float64) * s
    assert np.array_equal(got, ref.reshape(4, 256).astype(np.float32))
    assert np.array_equal(fp4_act_quant(got, 32), got)     # fake-quant is idempotent
