"""Muon operator family: `newton_schulz`, the hybrid Newton–Schulz orthogonalisation of Muon (docs/training.md).

    newton_schulz(x [k, r, c], coeffs=NS_COEFFS, eps=NS_EPS) -> [k, r, c]

Each of the k matrices is orthogonalised on its own (tall ones through their transpose, so the Gram matrix is the
small side). Backends: reference (float64 NumPy), composite (MindSpore bmm; `bf16=True` runs the matmuls in
bfloat16 on Ascend), cpp (one C++ aot kernel per call, CPU; deterministic for any thread count).
ascend_v4/train/optim.py (MuonAdamW) calls it once per bucket of equally shaped matrices.
"""
from ..registry import register
from . import reference
from .reference import NS_COEFFS, NS_EPS  # noqa: F401

register("newton_schulz", "reference", ("numpy",), priority=-10, tolerance=(0, 0))(reference.newton_schulz)

try:
    from . import composite as _c
    register("newton_schulz", "composite", ("CPU", "GPU", "Ascend"), priority=0, tolerance=(3e-6, 1e-4))(
        _c.newton_schulz)
except ImportError:  # pragma: no cover - mindspore missing
    pass

try:
    from . import cpp as _cpp  # noqa: F401  registers backend "cpp" (CPU, available when the .so is built)
except ImportError:  # pragma: no cover - mindspore missing
    pass
