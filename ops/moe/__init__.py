"""MoE operator family: moe_route (sqrt-softplus / hash routing), moe_dispatch, expert_ffn, moe_combine."""
from ..registry import register
from . import reference

for _name in ("moe_route", "moe_dispatch", "expert_ffn", "moe_combine"):
    register(_name, "reference", ("numpy",), priority=-10, tolerance=(0, 0))(getattr(reference, _name))

try:
    from . import composite as _c
    for _name in ("moe_route", "moe_dispatch", "expert_ffn", "moe_combine"):
        register(_name, "composite", ("CPU", "GPU", "Ascend"), priority=0, tolerance=(2e-5, 2e-4))(getattr(_c, _name))
except ImportError:  # pragma: no cover
    pass
