"""Mixed-precision policy, in one place: which dtype parameters and activations take on the current target.

On an Ascend device V4 runs in bfloat16 — parameters, activations, the matmuls on the cube units — with float32
islands where the reference computes in float32: mHC (mixes, Sinkhorn, stream collapse), the router (scores, top-k,
route weights), the compressor's softmax pooling, attention softmax statistics and the sink, RMSNorm statistics,
the losses, and the optimiser's master weights and moments. The islands live in the ops and Cells themselves
(they cast to float32 whatever their input dtype); this module only decides the parameter dtype. On CPU (the
reference backend, no bf16 matmul) and in the emulated Ascend resolution everything is float32. docs/ascend.md.
"""
from __future__ import annotations

import mindspore as ms

FP32_ISLANDS = ("mHC mixes / Sinkhorn / stream collapse", "router scores, top-k and route weights",
                "compressor softmax pooling", "attention softmax statistics and sink", "RMSNorm statistics",
                "losses", "optimiser master weights and moments")


def param_dtype():
    """bfloat16 on an Ascend device, float32 elsewhere (CPU, emulated Ascend resolution)."""
    from .ops.registry import target
    t = target()
    return ms.bfloat16 if t.device == "Ascend" and not t.emulated else ms.float32
