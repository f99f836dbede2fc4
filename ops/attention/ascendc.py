"""Ascend backends of the attention family: the AscendC kernels in ascendc/ (AV4SparseAttnSharedKV,
AV4LightningIndexer, AV4CompressKV), installed as the CANN custom-op package "ascend_v4_attention" by
`bash ops/attention/ascendc/build.sh --install`, called through ops.Custom(func_type="aot") with CustomRegOp attributes.
available() (ops/ascendc_package.py, the same rule for every family) needs an Ascend device and an installed package
declaring all three op types.

NOT RUN YET: no Ascend device or CANN toolkit was available when this was written. What is verified on CPU is the
kernels' logic (ascendc/tests/kernel_emu.cc runs them through an AscendC emulator against the NumPy reference), the
host tiling, and that every source type-checks; this binding itself needs a 910B / 910_93 to test.

Graph mode cannot create primitives inside construct, and CANN attributes are fixed per primitive, so primitives are
built ahead of time by prepare_*() (once per static configuration: scale, ratio, top-k, ...) and looked up by key
from a module dict inside construct, which graph mode supports (checked on CPU with the aot backends).
Backward: the sparse-attention op returns the float32 log-sum-exp so a grad kernel can reuse it; the grad kernels
are not written for Ascend yet (training on Ascend uses the composite's autodiff meanwhile).
"""
from __future__ import annotations

from .. import ascendc_package as _pkg

FAMILY = "attention"
VENDOR = _pkg.vendor_name(FAMILY)          # "ascend_v4_attention"
OP_TYPES = {"sparse_attention": "AV4SparseAttnSharedKV", "lightning_indexer": "AV4LightningIndexer",
            "compress_kv": "AV4CompressKV"}
NOTE = _pkg.install_note(FAMILY, OP_TYPES.values())
_PRIMS = {}


def package_installed() -> bool:
    """True when a package CANN would find declares all three op types (any SoC's ops-info json)."""
    return _pkg.package_installed(VENDOR, OP_TYPES.values())


def available() -> bool:
    """Ascend device AND the package with every op type (ops/ascendc_package.py: one rule for all families)."""
    return _pkg.available(VENDOR, OP_TYPES.values())


def _reg(op_name, inputs, outputs, attrs):
    from mindspore.ops import CustomRegOp, DataType
    reg = CustomRegOp(op_name)
    for i, name in enumerate(inputs):
        reg = reg.input(i, name)
    for i, name in enumerate(outputs):
        reg = reg.output(i, name)
    for name, vtype, value in attrs:
        reg = reg.attr(name, "required", vtype, value=value)
    reg = reg.dtype_format(*([DataType.None_None] * (len(inputs) + len(outputs))))
    return reg.target("Ascend").get_op_info()


def prepare_sparse_attention(scale, ratio=0, cmp_offset=-1, start_pos=0, with_list=True):
    """Build (once) the AV4SparseAttnSharedKV primitive for these attributes; returns its key."""
    import mindspore as ms
    from mindspore import ops
    key = ("attn", float(scale), int(ratio), int(cmp_offset), int(start_pos), bool(with_list))
    if key not in _PRIMS:
        ins = ["query", "kv", "sinks", "window_idx"] + (["cmp_idx"] if with_list else [])
        info = _reg(OP_TYPES["sparse_attention"], ins, ["attn_out", "softmax_lse"],
                    [("scale_value", "float", float(scale)), ("cmp_ratio", "int", int(ratio)),
                     ("cmp_offset", "int", int(cmp_offset)), ("start_pos", "int", int(start_pos))])
        _PRIMS[key] = ops.Custom(OP_TYPES["sparse_attention"], out_shape=lambda q, *a: (q, q[:3]),
                                 out_dtype=lambda q, *a: (q, ms.float32), func_type="aot", reg_info=info)
    return key


def prepare_indexer(topk, ratio, start_pos=0):
    import mindspore as ms
    from mindspore import ops
    key = ("indexer", int(topk), int(ratio), int(start_pos))
    if key not in _PRIMS:
        info = _reg(OP_TYPES["lightning_indexer"], ["query", "key", "weights"], ["sparse_indices"],
                    [("sparse_count", "int", int(topk)), ("cmp_ratio", "int", int(ratio)),
                     ("start_pos", "int", int(start_pos))])
        _PRIMS[key] = ops.Custom(OP_TYPES["lightning_indexer"],
                                 out_shape=lambda q, k, w: (q[0], q[1], min(int(topk), k[1])),
                                 out_dtype=lambda q, k, w: ms.int32, func_type="aot", reg_info=info)
    return key


def prepare_compress(norm_eps):
    from mindspore import ops
    key = ("compress", float(norm_eps))
    if key not in _PRIMS:
        info = _reg(OP_TYPES["compress_kv"], ["kv_proj", "score_proj", "ape", "norm_weight"], ["entries"],
                    [("norm_eps", "float", float(norm_eps))])
        _PRIMS[key] = ops.Custom(OP_TYPES["compress_kv"],
                                 out_shape=lambda kv, sc, ape, nw: (kv[0], kv[1] // ape[0], nw[0]),
                                 out_dtype=lambda kv, sc, ape, nw: kv, func_type="aot", reg_info=info)
    return key


# ------------------------------------------------------------------------- backends (prepare_* first)
def sparse_attention(q, kv, sink, window_idx, compressed_idx, scale):
    key = ("attn", float(scale), 0, -1, 0, compressed_idx is not None)
    if compressed_idx is None:
        return _PRIMS[key](q, kv, sink, window_idx)[0]
    return _PRIMS[key](q, kv, sink, window_idx, compressed_idx)[0]


def hca_attention(q, kv, sink, window_idx, ratio, scale, cmp_offset=None, start_pos=0):
    key = ("attn", float(scale), int(ratio), -1 if cmp_offset is None else int(cmp_offset), int(start_pos), False)
    return _PRIMS[key](q, kv, sink, window_idx)[0]


def lightning_indexer(q, k, w, ratio, topk, start_pos=0, fp4=True):
    if fp4:   # Hadamard + FP4 QDQ is the kernel's input quantisation; the composite's fp4_rotate runs it on the cube
        from .composite import fp4_rotate
        q, k = fp4_rotate(q), fp4_rotate(k)
    return _PRIMS[("indexer", int(topk), int(ratio), int(start_pos))](q, k, w)


def compress_kv(x, wkv, wgate, ape, norm_w, ratio, overlap, norm_eps=1e-6):
    from ..common import linear
    kvp = linear(x, wkv)       # cube matmuls; the kernel pools and normalises
    scp = linear(x, wgate)
    return _PRIMS[("compress", float(norm_eps))](kvp, scp, ape, norm_w)
