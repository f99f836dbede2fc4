"""Engram AscendC kernels (CANN package "ascend_v4_engram"): sources in op_host/ and op_kernel/, the MindSpore binding
in binding.py (a plain module: MindSpore's graph parser resolves a package __init__'s globals wrongly)."""
from .binding import *  # noqa: F401,F403
from .binding import (CONTRACTS, OP_TYPES, VENDOR, NOTE, GATE_TOLERANCE, DEQUANT_TOLERANCE, available,  # noqa: F401
                      package_installed, register_backends, engram_gate, engram_dequant, gate_backward)
