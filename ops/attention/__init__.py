"""Attention operator family: compress_kv, lightning_indexer, sparse_attention (shared-KV MQA with sink)."""
from ..registry import register
from . import reference

_OPS = ("compress_kv", "lightning_indexer", "sparse_attention")
for _name in _OPS:
    register(_name, "reference", ("numpy",), priority=-10, tolerance=(0, 0))(getattr(reference, _name))

try:
    from . import composite as _c
    for _name in _OPS:
        register(_name, "composite", ("CPU", "GPU", "Ascend"), priority=0, tolerance=(2e-5, 2e-4))(getattr(_c, _name))
except ImportError:  # pragma: no cover
    pass
