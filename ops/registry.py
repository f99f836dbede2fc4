"""Operator registry: every op has one public name and interchangeable backends chosen per platform.

A backend is registered with the platforms it runs on ("numpy" for the float64 reference, "CPU",
"Ascend") and a priority; `resolve(op)` picks the highest-priority backend that is available for the current
target, unless the user pins one (argument or ASCEND_V4_BACKENDS="hc_pre=cpp,*=composite").
`selected()` records which backend each op resolved to, so reports can say what actually ran.

The target (`set_target`) says which platform backends are resolved for: the device (CPU / Ascend), the SoC and
CANN version, whether a backward is needed (training: backends without one are skipped) and whether the Ascend
resolution runs *emulated* on a CPU (every AscendC / vendor aclnn call then runs as a contract stand-in, see
ops/ascend_call.py). `explain(op)` gives every backend's verdict with its reason; `resolve` is its first
"chosen" entry, and `ascend-v4 plan` prints the same verdicts, so the plan is what runs (docs/ascend.md).
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Tuple


class BackendError(RuntimeError):
    """No backend of an op can run here, or the requested one does not exist."""


@dataclass(frozen=True)
class Target:
    """What backends are resolved for. device: "CPU" or "Ascend" (the platform names backends register with)."""
    device: str = "CPU"
    soc: str = ""                 # "910b" | "910c" (Ascend)
    cann: str = ""                # CANN version, e.g. "8.5" (Ascend)
    emulated: bool = False        # Ascend resolution on a CPU host: AscendC / aclnn calls run as contract stand-ins
    planning: bool = False        # `ascend-v4 plan`: no device here; assume the AscendC packages are installed
    training: bool = False        # a backward pass is needed: backends without one are not eligible
    shapes: Dict[str, int] = field(default_factory=dict, compare=False)   # model sizes limits are checked against


@dataclass(frozen=True)
class Backend:
    op: str
    name: str
    fn: Callable
    platforms: Tuple[str, ...]
    priority: int = 0
    available: Callable[[], bool] = lambda: True
    tolerance: Tuple[float, float] = (1e-5, 1e-5)   # (atol, rtol) against the float64 reference, float32 inputs
    note: str = ""
    grad: bool = True             # has a backward (autodiff or a bprop)
    limits: Optional[Callable[["Target"], Optional[str]]] = None   # -> why this backend cannot serve the target
    what: str = ""                # what runs, for plans: "aclnnMoeInitRoutingV2 (CANN >= 8.0)", "AscendC HcPreAv4"


@dataclass(frozen=True)
class Verdict:
    backend: Backend
    chosen: bool
    reason: str


_REGISTRY: Dict[str, Dict[str, Backend]] = {}
_SELECTED: Dict[str, str] = {}
_TARGET: List[Optional[Target]] = [None]
_LISTENERS: List[Callable[[], None]] = []


def register(op: str, name: str, platforms: Tuple[str, ...], priority: int = 0,
             available: Callable[[], bool] = lambda: True, tolerance=(1e-5, 1e-5), note: str = "",
             grad: bool = True, limits=None, what: str = ""):
    """Decorator: register `fn` as backend `name` of `op`."""
    def deco(fn: Callable) -> Callable:
        _REGISTRY.setdefault(op, {})[name] = Backend(op, name, fn, tuple(platforms), priority, available,
                                                     tuple(tolerance), note, grad, limits, what)
        return fn
    return deco


# Platforms and priority of the standard backends of a family: the float64 reference (numpy: parity only), the
# MindSpore composite (every device), the C++ aot kernels (CPU); Ascend backends register with their own.
TIERS: Dict[str, Tuple[Tuple[str, ...], int]] = {
    "reference": (("numpy",), -10), "composite": (("CPU", "GPU", "Ascend"), 0), "cpp": (("CPU",), 10)}


def register_module(package: str, backend: str, names, **options):
    """Register `<package>.<backend>.<name>` as backend `backend` of op `name` for every name in `names`, with the
    tier's platforms and priority (TIERS) and the module's `available()` when it has one; `options` go to register
    (tolerance, note). The reference must import; another backend whose module cannot (MindSpore missing)
    registers nothing. Returns the module, or None."""
    try:
        module = importlib.import_module(f"{package}.{backend}")
    except ImportError:
        if backend == "reference":
            raise
        return None
    platforms, priority = TIERS[backend]
    if hasattr(module, "available"):
        options.setdefault("available", module.available)
    for name in names:
        register(name, backend, platforms, priority, **options)(getattr(module, name))
    return module


def ops() -> List[str]:
    _load_all()
    return sorted(_REGISTRY)


def backends(op: str) -> List[Backend]:
    _load_all()
    if op not in _REGISTRY:
        raise BackendError(f"unknown op '{op}'; known ops: {', '.join(sorted(_REGISTRY))}")
    return sorted(_REGISTRY[op].values(), key=lambda b: -b.priority)


def pinned(op: str) -> Optional[str]:
    """The backend the user pinned for `op` (ASCEND_V4_BACKENDS, "op=name" or "*=name"), or None."""
    spec = os.environ.get("ASCEND_V4_BACKENDS", "")
    pins = dict(kv.split("=", 1) for kv in spec.split(",") if "=" in kv)
    return pins.get(op, pins.get("*"))


# ------------------------------------------------------------------------------------------------ target
def set_target(t: Optional[Target] = None, **changes) -> Target:
    """Set the process-wide target (None: back to "follow MindSpore's device target"); keyword arguments
    update the current one (e.g. set_target(training=True)). Returns the target now in force."""
    if t is None and changes:
        t = replace(target(), **changes)
    _TARGET[0] = t
    for cb in _LISTENERS:
        cb()
    return target()


def on_target_change(cb: Callable[[], None]) -> None:
    """Call `cb` whenever the target changes (bindings drop primitives built for the previous one)."""
    _LISTENERS.append(cb)


def target() -> Target:
    """The target backends are resolved for: the one set by set_target, else MindSpore's device target."""
    if _TARGET[0] is not None:
        return _TARGET[0]
    return Target(device=_mindspore_device())


def model_shapes(cfg) -> Dict[str, int]:
    """The model sizes backend limits are checked against (a ModelConfig or anything with its attribute names)."""
    keys = ("dim", "n_heads", "head_dim", "rope_head_dim", "index_n_heads", "index_head_dim", "index_topk",
            "n_routed_experts", "n_activated_experts", "hc_mult", "window_size", "moe_inter_dim", "vocab_size")
    return {k: int(getattr(cfg, k)) for k in keys if isinstance(getattr(cfg, k, None), int)}


def use_model_shapes(cfg) -> None:
    """Record the model's sizes in the current target; called when a model is built (`ascend-v4 plan` passes
    them in its Target from the config alone)."""
    t = target()
    _TARGET[0] = replace(t, shapes={**t.shapes, **model_shapes(cfg)})


def _mindspore_device() -> str:
    try:
        import mindspore as ms
        return ms.get_context("device_target") or "CPU"
    except Exception:  # pragma: no cover - mindspore missing
        return "CPU"


def current_device() -> str:
    """The platform backends are resolved for ("Ascend" also when the Ascend resolution is emulated on CPU)."""
    return target().device


# ------------------------------------------------------------------------------------------------ resolution
def explain(op: str, t: Optional[Target] = None) -> List[Verdict]:
    """Every backend of `op` with its verdict for target `t` (default: the current target), best first; exactly
    one is chosen when any can run. The one resolution rule: `resolve` and `ascend-v4 plan` both use it."""
    t = t or target()
    saved, _TARGET[0] = _TARGET[0], t          # availability and limits are judged for `t`
    try:
        return _explain(op, t)
    finally:
        _TARGET[0] = saved


def _explain(op: str, t: Target) -> List[Verdict]:
    chosen = False
    out = []
    for b in backends(op):
        if t.device not in b.platforms:
            why = f"runs on {'/'.join(b.platforms)}, not {t.device}"
        elif t.training and not b.grad:
            why = "no backward pass (training needs one)"
        elif not b.available():
            why = f"not available: {b.note or 'not built'}"
        else:
            why = b.limits(t) if b.limits is not None else None
            why = f"outside its limits: {why}" if why else None
        if why is None and not chosen:
            chosen = True
            out.append(Verdict(b, True, "highest-priority backend that runs here"))
        else:
            out.append(Verdict(b, False, why or "a higher-priority backend runs"))
    return out


def resolve(op: str, backend: Optional[str] = None, device: Optional[str] = None) -> Backend:
    """The backend that runs `op` for the current target (or `device`, overriding only the device)."""
    t = target() if device is None else replace(target(), device=device)
    want = backend or pinned(op)
    cands = backends(op)
    if want:
        for b in cands:
            if b.name == want:
                if not b.available():
                    raise BackendError(f"backend '{want}' of op '{op}' is not available here ({b.note or 'not built'}); "
                                       f"choose one of {[c.name for c in cands if c.available()]}")
                _SELECTED[op] = b.name
                return b
        raise BackendError(f"op '{op}' has no backend '{want}'; choose one of {[c.name for c in cands]}")
    for v in explain(op, t):
        if v.chosen:
            _SELECTED[op] = v.backend.name
            return v.backend
    raise BackendError(f"no backend of op '{op}' runs on {t.device}: " +
                       "; ".join(f"{v.backend.name}: {v.reason}" for v in explain(op, t)))


def selected() -> Dict[str, str]:
    """op -> backend name, for every op resolved so far in this process."""
    return dict(_SELECTED)


def _load_all() -> None:
    # Importing the families registers their backends; one-way: families import this module, never the reverse
    # at import time.
    from . import mhc, moe, attention, muon, engram  # noqa: F401
