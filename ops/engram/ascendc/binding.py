"""Engram backend "ascendc": the AscendC kernels of this folder (EngramGateAv4, EngramDequantAv4) on 910B / 910C.

The kernels are installed as the CANN custom-op package "ascend_v4_engram" (`bash ops/engram/ascendc/build.sh
--install`). Bound through ops/ascend_call.py (the one binding style of every family): one `Contract` per OpDef
(op_host/engram_av4_def.cpp; tests/ops/test_bindings.py checks them against the source), ops.Custom(aot) with
reg_info built from it on Ascend, contract stand-ins when the Ascend resolution is emulated on CPU.

* engram_gate(h, kv, q_weight, k_weight, alive, eps): leading dims flattened to [T, hc, D] / [T, (hc+1) D], the
  weight q_weight * k_weight multiplied once in float32 outside the kernel (so autodiff carries its gradient to both),
  alive as float32; backward: the hand-written VJP below (MindSpore ops, float32) attached as bprop.
* engram_dequant(rows, scales): INT8 rows [..., L] and float32 scales [..., L / g] flattened to 2-D; output float32
  (dst_type 0: the registry's contract is float rows; the model casts to its dtype) -- inference only (no backward:
  training keeps float tables).
NOT RUN on an NPU (docs/ascend.md, docs/ascendc.md "Engram").
"""
from __future__ import annotations

import functools
import math

import mindspore as ms
from mindspore import ops

from ... import ascendc_package as _pkg
from ...ascend_call import Attr, Contract, In, primitive

FAMILY = "engram"
VENDOR = _pkg.vendor_name(FAMILY)          # "ascend_v4_engram"
OP_TYPES = {"engram_gate": "EngramGateAv4", "engram_dequant": "EngramDequantAv4"}
NOTE = _pkg.install_note(FAMILY, OP_TYPES.values())
GATE_TOLERANCE = (2e-5, 2e-4)    # float32 statistics (ReduceSum order differs from the float64 reference)
DEQUANT_TOLERANCE = (0, 1e-7)    # one float32 rounding of an exact int8 x float32 product
CLAMP = 1e-6                     # reference.CLAMP, the kernel's td.clamp


def _gate_limits(shapes, attrs):
    h, kv = shapes["h"], shapes["kv"]
    if len(h) != 3 or len(kv) != 2 or kv[1] != (h[1] + 1) * h[2] or kv[0] != h[0]:
        return f"h must be [T, hc, D] and kv [T, (hc + 1) D], got {list(h)} and {list(kv)}"
    if not 1 <= h[1] <= 8 or h[2] % 16 or h[2] > 65535:
        return f"hc in [1, 8] and D a multiple of 16 up to 65535 (32-byte bf16 rows), got hc {h[1]}, D {h[2]}"
    if tuple(shapes["weight"]) != (h[1], h[2]) or tuple(shapes["alive"]) != (h[0],):
        return f"weight must be [hc, D] and alive [T], got {list(shapes['weight'])} and {list(shapes['alive'])}"
    return None


def _dequant_limits(shapes, attrs):
    rows, sc = shapes["rows"], shapes["scales"]
    if len(rows) != 2 or len(sc) != 2 or rows[0] != sc[0] or rows[1] % sc[1]:
        return f"rows [N, L] and scales [N, L / g], got {list(rows)} and {list(sc)}"
    g = rows[1] // sc[1]
    if g % 8 or g > 64:
        return f"group size g = L / scales must be a multiple of 8 up to 64, got {g}"
    if attrs.get("dst_type", 1) not in (0, 1):
        return f"dst_type 0 (float32) or 1 (bf16), got {attrs['dst_type']}"
    return None


CONTRACTS = {
    "EngramGateAv4": Contract("EngramGateAv4", "ascendc",
                              (In("h", False, ("float32", "bfloat16")), In("kv", False, ("float32", "bfloat16")),
                               In("weight", False, ("float32", "float32")), In("alive", False, ("float32", "float32"))),
                              ("out",), (Attr("eps", "float"),), _gate_limits),
    "EngramDequantAv4": Contract("EngramDequantAv4", "ascendc",
                                 (In("rows", False, ("int8", "int8")), In("scales", False, ("float32", "float32"))),
                                 ("y",), (Attr("dst_type", "int"),), _dequant_limits),
}


def package_installed() -> bool:
    """True when a package CANN would find declares both op types (any SoC's ops-info json)."""
    return _pkg.package_installed(VENDOR, OP_TYPES.values())


def available() -> bool:
    """Ascend device AND the package with every op type (ops/ascendc_package.py: one rule for all families)."""
    return _pkg.available(VENDOR, OP_TYPES.values())


# ------------------------------------------------------------------------------------ CPU emulation (reference)
def _emulate_gate(h, kv, weight, alive, eps=1e-20):
    import numpy as np
    from .. import reference as R
    hc, D = h.shape[1], h.shape[2]
    # the reference with w = weight: q_weight = weight, k_weight = 1
    return R.engram_gate(h, kv, np.asarray(weight, np.float64), np.ones((hc, D)), alive, eps)


def _emulate_dequant(rows, scales, dst_type=0):
    from .. import reference as R
    return R.engram_dequant(rows, scales)


def _f32(t):
    return ops.cast(t, ms.float32)


def gate_backward(h, kv, weight, alive, eps, dout):
    """VJP of the gated read (reference.engram_gate with w = weight), float32: (dh, dkv, dweight, dalive = 0).

    Per token and stream, with ms_x = mean x² + eps, r_x = ms_x^-1/2, S = Σ h w key, dot = S r_h r_k / √D,
    m = sqrt(max(|dot|, 1e-6)), σ = sigmoid(sign(dot) m), g = σ alive, out = h + g value:
      dg = Σ dout value;  ddot = dg alive σ(1 − σ) / (2 m) where |dot| > 1e-6, else 0;
      dS = ddot r_h r_k / √D;  dr_h = ddot S r_k / √D;  dr_k = ddot S r_h / √D;
      dh = dout + dS w key − dr_h r_h³ h / D;  dkey = dS w h − dr_k r_k³ key / D;  dvalue = Σ_s g_s dout_s;
      dweight = Σ_tokens dS h key."""
    T, hc, D = h.shape
    hf, kvf, w = _f32(h), _f32(kv), _f32(weight)
    key = kvf[:, :hc * D].reshape(T, hc, D)
    value = kvf[:, hc * D:]
    a = ops.expand_dims(_f32(alive), -1)
    g_out = _f32(dout)
    rh = ops.rsqrt(ops.mean(hf * hf, -1) + eps)
    rk = ops.rsqrt(ops.mean(key * key, -1) + eps)
    s = ops.sum(hf * w * key, -1)
    isd = 1.0 / math.sqrt(D)
    dot = s * rh * rk * isd
    big = ops.abs(dot) > CLAMP
    m = ops.sqrt(ops.maximum(ops.abs(dot), CLAMP))
    sig = ops.sigmoid(ops.where(ops.reciprocal(dot) < 0, -m, m))
    g = sig * a
    dg = ops.sum(g_out * ops.expand_dims(value, 1), -1)
    ddot = ops.where(big, dg * a * sig * (1 - sig) / (2 * m), ops.zeros_like(dg))
    ds = ddot * rh * rk * isd
    drh = ddot * s * rk * isd
    drk = ddot * s * rh * isd
    e = ops.expand_dims
    dh = g_out + e(ds, -1) * w * key - e(drh * rh * rh * rh / D, -1) * hf
    dkey = e(ds, -1) * w * hf - e(drk * rk * rk * rk / D, -1) * key
    dvalue = ops.sum(e(g, -1) * g_out, 1)
    dw = ops.sum(e(ds, -1) * hf * key, 0)
    dkv = ops.concat([dkey.reshape(T, hc * D), dvalue], -1)
    return ops.cast(dh, h.dtype), ops.cast(dkv, kv.dtype), dw, ops.zeros_like(alive)


def _gate_shape(h, kv, weight, alive):
    return h


def _gate_dtype(h, kv, weight, alive):
    return h


def _dequant_shape(rows, scales):
    return rows


def _dequant_dtype(rows, scales):
    return ms.float32


@functools.lru_cache(None)
def _gate(eps):
    def bprop(h, kv, weight, alive, out, dout):
        return gate_backward(h, kv, weight, alive, eps, dout)

    return primitive(CONTRACTS["EngramGateAv4"], {"eps": float(eps)}, _gate_shape, _gate_dtype, bprop, _emulate_gate)


@functools.lru_cache(None)
def _dequant():
    return primitive(CONTRACTS["EngramDequantAv4"], {"dst_type": 0}, _dequant_shape, _dequant_dtype, None,
                     _emulate_dequant)


def engram_gate(h, kv, q_weight, k_weight, alive, eps=1e-20):
    shape = h.shape
    hc, D = shape[-2], shape[-1]
    w = ops.cast(q_weight, ms.float32) * ops.cast(k_weight, ms.float32)
    out = _gate(float(eps))(h.reshape((-1, hc, D)), ops.cast(kv, h.dtype).reshape((-1, (hc + 1) * D)), w,
                            ops.cast(alive, ms.float32).reshape((-1,)))
    return out.reshape(shape)


def engram_dequant(rows, scales):
    shape = rows.shape
    out = _dequant()(ops.cast(rows, ms.int8).reshape((-1, shape[-1])),
                     ops.cast(scales, ms.float32).reshape((-1, scales.shape[-1])))
    return out.reshape(shape)


def register_backends():
    from ...registry import on_target_change, register
    for cache in (_gate, _dequant):      # device primitives and CPU stand-ins differ
        on_target_change(cache.cache_clear)
    register("engram_gate", "ascendc", ("Ascend",), priority=20, available=available, tolerance=GATE_TOLERANCE,
             note=NOTE, what=f"AscendC EngramGateAv4 (package {VENDOR}): float32 statistics on the vector cores, "
                             f"bf16 streams in and out")(engram_gate)
    register("engram_dequant", "ascendc", ("Ascend",), priority=20, available=available,
             tolerance=DEQUANT_TOLERANCE, note=NOTE, grad=False,
             what=f"AscendC EngramDequantAv4 (package {VENDOR}): INT8 rows x float32 group scales "
                  f"(Cast, Brcb, strided Mul) after the H2D copy")(engram_dequant)
