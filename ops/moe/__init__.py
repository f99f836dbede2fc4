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
from ..registry import register_module

MODEL_OPS = ("moe_route", "moe_dispatch", "expert_ffn", "moe_combine")
VENDOR_OPS = ("moe_gating_topk", "moe_init_routing", "grouped_matmul", "moe_finalize_routing", "grouped_expert_ffn")
ALL_OPS = MODEL_OPS + VENDOR_OPS

register_module(__name__, "reference", ALL_OPS, tolerance=(0, 0))
register_module(__name__, "composite", ALL_OPS, tolerance=(2e-5, 2e-4))
register_module(__name__, "cpp", ALL_OPS, tolerance=(2e-5, 2e-4), note="build with `python ops/build.py moe`")

# Ascend backends: registered everywhere, available only for an Ascend target (never picked on CPU). Both bind
# through ops/ascend_call.py; vendor operators (aclnn) outrank our AscendC kernels where they have V4's semantics.
from . import ascendc as _asc  # noqa: E402
from . import aclnn as _aclnn  # noqa: E402
_asc.register_backends()
_aclnn.register_backends()
