"""MoE operator family.

Model-facing ops (what ascend_v4/model.py calls): moe_route (sqrt-softplus / hash routing), moe_dispatch
(drop/pad), expert_ffn ([E, C, D] SwiGLU with clamp), moe_combine.
Vendor-named ops mapping one-to-one onto aclnn: moe_gating_topk (MoeGatingTopK + hash), moe_init_routing
(MoeInitRoutingV2, dropless and drop/pad), grouped_matmul (GroupedMatmul), moe_finalize_routing
(MoeFinalizeRoutingV2); plus grouped_expert_ffn (GMM(w1|w3) + clamped SwiGLU + GMM(w2) on dropless rows).
Backends: reference (float64 NumPy), composite (MindSpore ops), cpp (C++ aot kernels with bprop, CPU),
ascendc (our AscendC kernels, Ascend, when the "ascend_v4_moe" package is installed), aclnn (MindSpore's built-in
vendor ops on Ascend, for the ops they cover). Expert parallelism: ops/moe/parallel.py. Layer: ops/moe/layer.py.
"""
from ..registry import register
from . import reference

MODEL_OPS = ("moe_route", "moe_dispatch", "expert_ffn", "moe_combine")
VENDOR_OPS = ("moe_gating_topk", "moe_init_routing", "grouped_matmul", "moe_finalize_routing", "grouped_expert_ffn")
ALL_OPS = MODEL_OPS + VENDOR_OPS

for _name in ALL_OPS:
    register(_name, "reference", ("numpy",), priority=-10, tolerance=(0, 0))(getattr(reference, _name))

try:
    from . import composite as _c
    for _name in ALL_OPS:
        register(_name, "composite", ("CPU", "GPU", "Ascend"), priority=0, tolerance=(2e-5, 2e-4))(getattr(_c, _name))
except ImportError:  # pragma: no cover
    pass

try:
    from . import cpp as _cpp
    for _name in ALL_OPS:
        register(_name, "cpp", ("CPU",), priority=10, available=_cpp.available, tolerance=(2e-5, 2e-4),
                 note="build with `python ops/build.py moe`")(getattr(_cpp, _name))
except ImportError:  # pragma: no cover
    pass

# Ascend backends: registered everywhere, available only for an Ascend target (never picked on CPU). Both bind
# through ops/ascend_call.py; vendor operators (aclnn) outrank our AscendC kernels where they have V4's semantics.
from . import ascendc as _asc  # noqa: E402
from . import aclnn as _aclnn  # noqa: E402
_asc.register_backends()
_aclnn.register_backends()
