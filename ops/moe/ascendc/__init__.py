"""MoE AscendC kernels (CANN package "ascend_v4_moe"): sources in op_host/ and op_kernel/, the MindSpore binding in
binding.py (a plain module, like every family's binding)."""
from .binding import *  # noqa: F401,F403
from .binding import (CONTRACTS, OP_TYPES, VENDOR, NOTE, TOLERANCE, available, package_installed, swiglu,  # noqa: F401
                      moe_gating_topk, moe_init_routing, moe_finalize_routing, grouped_matmul, grouped_expert_ffn,
                      expert_ffn, moe_route, moe_dispatch, moe_combine, register_backends)
