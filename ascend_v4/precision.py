"""Mixed-precision policy, in one place: which dtype parameters and activations take, and where bf16 rounding
happens, on the current target.

Policies (train YAML `precision`, `set_policy`):
  bf16           Ascend's (the default there): V4 runs in bfloat16 — parameters, activations, the matmuls on the
                 cube units — with float32 islands where the reference computes in float32 (`FP32_ISLANDS`), fp32
                 master weights and optimiser state (train/optim.py). The islands live in the ops and Cells
                 themselves: they cast their inputs to float32 and hand float32 results on.
  fp32           everything float32 (the CPU default: the reference backend has no bf16 matmul).
  bf16-emulated  CPU: float32 arithmetic rounded to bf16 (round to nearest even) at the points where the Ascend
                 policy holds a bf16 tensor — the same model code, so the bf16 recipe's numerics can be tested
                 without a chip. Rounding points (`act`): every Linear output, RMSNorm output, the embedding, the
                 mHC sublayer input and the new streams, each sublayer's output (DeepSeek-V4.1's block path:
                 the same points, plus the gathered Engram rows and the streams after the Engram read, and the
                 DSpark target features); parameters Ascend stores in bf16
                 (`stored_bf16`) hold bf16-representable values (rounded at load and after every optimiser update,
                 from an fp32 master). Not emulated: roundings inside fused operators (attention, expert FFN, the
                 compressor) whose intermediates Ascend keeps in fp32 or in bf16 depending on the kernel.

An island's result goes through `island(name, x)`: the identity (it is float32 under every policy); a test can
drop an island (`drop_islands`) to see the bf16 error it prevents (tests/train/test_precision.py).
The policy is read when a graph is compiled: set it before building and compiling the model. docs/ascend.md.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Optional

import numpy as np
import mindspore as ms
from mindspore import ops

POLICIES = ("fp32", "bf16", "bf16-emulated")
FP32_ISLANDS = ("mHC mixes / Sinkhorn / stream collapse", "router scores, top-k and route weights",
                "compressor softmax pooling", "attention softmax statistics and sink", "RMSNorm statistics",
                "losses", "optimiser master weights and moments")
# the islands with an `island()` hook in the model (the others are inside fused operators)
ISLAND_HOOKS = ("mhc", "router", "logits")

_POLICY: Optional[str] = None          # None: the device's default
_EMULATE = False                       # read by `act` / `island` when a graph is compiled
_DROPPED: tuple = ()


def set_policy(name: Optional[str]) -> None:
    """Select the policy (None: the device's default). Set it before building and compiling the model."""
    global _POLICY, _EMULATE
    if name is not None and name not in POLICIES:
        raise ValueError(f"precision policy {name!r}: use one of {', '.join(POLICIES)}")
    _POLICY = name
    _EMULATE = name == "bf16-emulated"


def policy() -> str:
    """The policy in force: the one set, else bf16 on an Ascend device and fp32 elsewhere (CPU, emulated Ascend
    resolution)."""
    if _POLICY is not None:
        return _POLICY
    from .ops.registry import target
    t = target()
    return "bf16" if t.device == "Ascend" and not t.emulated else "fp32"


def emulating() -> bool:
    return _EMULATE


def param_dtype():
    """Dtype of the parameters Ascend stores in bf16: bfloat16 under the bf16 policy, else float32 (the emulation
    rounds float32 values instead)."""
    return ms.bfloat16 if policy() == "bf16" else ms.float32


def stored_bf16(name: str) -> bool:
    """Whether parameter `name` is bf16 under the bf16 policy: the weights of Linear, RMSNorm, Embedding and the
    router (`*.weight`, model.py builds them with param_dtype()) and DeepSeek-V4.1's Engram gains
    (`engram.q_weight` / `engram.k_weight`, BF16 in the release); mHC parameters, sinks, `ape`, router biases and
    the hash table stay float32 / int32. (V4.1's Engram tables are not model parameters: train/v41.py.)"""
    return name.endswith((".weight", "engram.q_weight", "engram.k_weight"))


@contextmanager
def drop_islands(names: Iterable[str]):
    """Tests only: compute the named islands (`ISLAND_HOOKS`) as if in bf16 under bf16-emulated."""
    global _DROPPED
    names = tuple(names)
    bad = [n for n in names if n not in ISLAND_HOOKS]
    if bad:
        raise ValueError(f"unknown island(s) {bad}; hooks: {ISLAND_HOOKS}")
    old, _DROPPED = _DROPPED, names
    try:
        yield
    finally:
        _DROPPED = old


# ------------------------------------------------------------------------------------------------ graph hooks
def round_bf16(x):
    """x rounded to the nearest bf16 value (ties to even), in x's dtype (graph op; its gradient is rounded too,
    as a bf16 activation's gradient is on Ascend)."""
    return ops.cast(ops.cast(x, ms.bfloat16), x.dtype)


def act(x):
    """A point where the bf16 policy holds a bf16 activation: rounded under bf16-emulated, else unchanged (on
    Ascend x is already bf16)."""
    if _EMULATE:
        return round_bf16(x)
    return x


def island(name: str, x):
    """The float32 result of island `name`: unchanged (rounded only when a test drops the island)."""
    if _EMULATE and name in _DROPPED:
        return round_bf16(x)
    return x


# ------------------------------------------------------------------------------------------------ host side
def round_bf16_np(a: np.ndarray) -> np.ndarray:
    """float32 -> nearest bf16 value (ties to even) as float32, NumPy (NaN stays NaN)."""
    a = np.ascontiguousarray(a, np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16).astype(np.uint32)
    out = r.view(np.float32)
    return np.where(np.isnan(a), a, out)


def round_stored_params(model) -> int:
    """bf16-emulated: round every parameter Ascend stores in bf16 to a bf16 value (after loading weights, before
    building the optimiser, whose fp32 masters start from these values as they do from bf16 weights on Ascend).
    Returns how many parameters were rounded."""
    n = 0
    for p in model.get_parameters():
        if stored_bf16(p.name) and p.dtype == ms.float32:
            p.set_data(ms.Tensor(round_bf16_np(p.asnumpy())))
            n += 1
    return n
