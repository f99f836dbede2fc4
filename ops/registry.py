"""Operator registry: every op has one public name and interchangeable backends chosen per platform.

A backend is registered with the platforms it runs on ("numpy" for the float64 reference, "CPU",
"Ascend") and a priority; `resolve(op)` picks the highest-priority backend that is available on the
current device, unless the user pins one (argument or ASCEND_V4_BACKENDS="hc_pre=cpp,*=composite").
`selected()` records which backend each op resolved to, so reports can say what actually ran.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple


class BackendError(RuntimeError):
    """No backend of an op can run here, or the requested one does not exist."""


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


_REGISTRY: Dict[str, Dict[str, Backend]] = {}
_SELECTED: Dict[str, str] = {}


def register(op: str, name: str, platforms: Tuple[str, ...], priority: int = 0,
             available: Callable[[], bool] = lambda: True, tolerance=(1e-5, 1e-5), note: str = ""):
    """Decorator: register `fn` as backend `name` of `op`."""
    def deco(fn: Callable) -> Callable:
        _REGISTRY.setdefault(op, {})[name] = Backend(op, name, fn, tuple(platforms), priority, available,
                                                     tuple(tolerance), note)
        return fn
    return deco


def ops() -> List[str]:
    _load_all()
    return sorted(_REGISTRY)


def backends(op: str) -> List[Backend]:
    _load_all()
    if op not in _REGISTRY:
        raise BackendError(f"unknown op '{op}'; known ops: {', '.join(sorted(_REGISTRY))}")
    return sorted(_REGISTRY[op].values(), key=lambda b: -b.priority)


def _pinned(op: str) -> Optional[str]:
    spec = os.environ.get("ASCEND_V4_BACKENDS", "")
    pins = dict(kv.split("=", 1) for kv in spec.split(",") if "=" in kv)
    return pins.get(op, pins.get("*"))


def current_device() -> str:
    try:
        import mindspore as ms
        return ms.get_context("device_target") or "CPU"
    except Exception:  # pragma: no cover - mindspore missing
        return "CPU"


def resolve(op: str, backend: Optional[str] = None, device: Optional[str] = None) -> Backend:
    """The backend that runs `op` on `device` (default: MindSpore's current device target)."""
    device = device or current_device()
    want = backend or _pinned(op)
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
    for b in cands:
        if device in b.platforms and b.available():
            _SELECTED[op] = b.name
            return b
    raise BackendError(f"no backend of op '{op}' runs on {device}; registered: "
                       f"{[(c.name, c.platforms) for c in cands]}")


def selected() -> Dict[str, str]:
    """op -> backend name, for every op resolved so far in this process."""
    return dict(_SELECTED)


def _load_all() -> None:
    # Importing the families registers their backends; one-way: families import this module, never the reverse
    # at import time.
    from . import mhc, moe, attention, muon, engram  # noqa: F401
