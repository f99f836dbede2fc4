"""mHC operator family: hc_pre (inverse-RMS mixes + Sinkhorn), hc_mixes (the same weights without the collapse, for
V4.1's pipelined mHC), hc_post (transposed residual mix), hc_head."""
from ..registry import register_module

_OPS = ("hc_pre", "hc_mixes", "hc_post", "hc_head")
register_module(__name__, "reference", _OPS, tolerance=(0, 0))
register_module(__name__, "composite", _OPS, tolerance=(2e-5, 2e-4))

try:
    from . import cpp as _cpp  # noqa: F401  registers backend "cpp" (CPU, available when the .so is built)
except ImportError:  # pragma: no cover - mindspore missing
    pass

try:
    from .ascendc import register_backends as _register_ascendc
except ImportError:  # pragma: no cover - a non-editable install without the ascendc sub-package
    _register_ascendc = None
if _register_ascendc is not None:
    _register_ascendc()  # backend "ascendc": Ascend only, available once the CANN custom op package is installed
