"""ascend_v4.ops: our operators, one public function each, backends chosen by the registry.

    from ascend_v4 import ops
    y, post, comb = ops.hc_pre(x, fn, scale, base)            # runs the backend resolved for this device
    ops.registry.resolve("hc_pre").name                         # -> "composite" / "cpp" / "ascendc"

Families live in sub-packages (mhc/, moe/, attention/, muon/), each with a float64 NumPy `reference` and a
MindSpore `composite`; compiled backends register themselves next to them.
"""
from . import registry
from .registry import resolve, backends, selected, BackendError

_PUBLIC = ("hc_pre", "hc_post", "hc_head", "moe_route", "moe_dispatch", "expert_ffn", "moe_combine",
           "moe_gating_topk", "moe_init_routing", "grouped_matmul", "moe_finalize_routing", "grouped_expert_ffn",
           "compress_kv", "compress_kv_step", "lightning_indexer", "sparse_attention", "hca_attention",
           "newton_schulz")


def _make(op):
    def call(*args, backend=None, **kw):
        return resolve(op, backend).fn(*args, **kw)
    call.__name__ = op
    call.__doc__ = f"Public entry of op '{op}': dispatches to the registry's backend (pin with backend=NAME)."
    return call


for _op in _PUBLIC:
    globals()[_op] = _make(_op)

__all__ = list(_PUBLIC) + ["registry", "resolve", "backends", "selected", "BackendError"]
