"""mHC AscendC kernels (CANN package "ascend_v4_mhc"): sources in op_host/ and op_kernel/, the MindSpore binding in
binding.py (a plain module: MindSpore's graph parser resolves a package __init__'s globals wrongly)."""
from .binding import *  # noqa: F401,F403
from .binding import CONTRACTS, OP_TYPES, VENDOR, NOTE, TOLERANCE, SINKHORN_ITERS, available, package_installed, \
    register_backends, hc_pre, hc_post, hc_head  # noqa: F401
