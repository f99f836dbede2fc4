"""mHC operator family: hc_pre (inverse-RMS mixes + Sinkhorn), hc_mixes (the same weights without the collapse, for
V4.1's pipelined mHC), hc_post (transposed residual mix), hc_head."""
from ..registry import register
from . import reference

register("hc_pre", "reference", ("numpy",), priority=-10, tolerance=(0, 0))(reference.hc_pre)
register("hc_mixes", "reference", ("numpy",), priority=-10, tolerance=(0, 0))(reference.hc_mixes)
register("hc_post", "reference", ("numpy",), priority=-10, tolerance=(0, 0))(reference.hc_post)
register("hc_head", "reference", ("numpy",), priority=-10, tolerance=(0, 0))(reference.hc_head)


try:
    from . import composite as _c  # noqa: F401  (mindspore present)
    register("hc_pre", "composite", ("CPU", "GPU", "Ascend"), priority=0, tolerance=(2e-5, 2e-4))(_c.hc_pre)
    register("hc_mixes", "composite", ("CPU", "GPU", "Ascend"), priority=0, tolerance=(2e-5, 2e-4))(_c.hc_mixes)
    register("hc_post", "composite", ("CPU", "GPU", "Ascend"), priority=0, tolerance=(2e-5, 2e-4))(_c.hc_post)
    register("hc_head", "composite", ("CPU", "GPU", "Ascend"), priority=0, tolerance=(2e-5, 2e-4))(_c.hc_head)
except ImportError:  # pragma: no cover
    pass

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
