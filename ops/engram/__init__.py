"""Engram operator family (DeepSeek-V4.1): engram_lookup (table rows of the hashed n-grams), engram_dequant (INT8
rows × group scales, for rows the host ships in their stored format) and engram_gate (the gated read into each
mHC stream). Hashing (`reference.NgramHashState`) is integer-exact NumPy run on the host:
its output only indexes tables. See docs/deepseek-v4.1.md; on Ascend (host tables, pinned staging + async H2D,
AscendC EngramGateAv4 / EngramDequantAv4): docs/ascendc.md, "Engram on Ascend"."""
from ..registry import register
from . import reference

register("engram_lookup", "reference", ("numpy",), priority=-10, tolerance=(0, 0))(reference.engram_lookup)
register("engram_gate", "reference", ("numpy",), priority=-10, tolerance=(0, 0))(reference.engram_gate)
register("engram_dequant", "reference", ("numpy",), priority=-10, tolerance=(0, 0))(reference.engram_dequant)

try:
    from . import composite as _c  # noqa: F401  (mindspore present)
    register("engram_lookup", "composite", ("CPU", "GPU", "Ascend"), priority=0, tolerance=(0, 1e-7))(_c.engram_lookup)
    register("engram_gate", "composite", ("CPU", "GPU", "Ascend"), priority=0, tolerance=(2e-6, 2e-5))(_c.engram_gate)
    register("engram_dequant", "composite", ("CPU", "GPU", "Ascend"), priority=0, tolerance=(0, 1e-7))(
        _c.engram_dequant)
except ImportError:  # pragma: no cover
    pass

from . import cpp as _cpp  # noqa: E402,F401  registers backend "cpp" of engram_lookup when the .so is built

# Ascend: the tables stay in host memory; engram_lookup is the host gather + pinned staging + async H2D
# (ascend_host.py), engram_gate / engram_dequant our AscendC kernels (ascendc/, package "ascend_v4_engram").
from . import ascend_host as _ah  # noqa: E402
register("engram_lookup", "host", ("Ascend",), priority=20, tolerance=(0, 0), grad=False, what=_ah.WHAT,
         note="host gather + H2D; its backward is the host scatter-add of the row-sparse optimiser")(
    _ah.engram_lookup_host)
try:
    from .ascendc import register_backends as _register_ascendc
except ImportError:  # pragma: no cover - mindspore missing
    _register_ascendc = None
if _register_ascendc is not None:
    _register_ascendc()
