"""Parity harness: every registered backend of every op against the float64 NumPy reference.

Each family lists its cases in `ops/<family>/cases.py` as `CASES = [Case(...), ...]`. A case builds float64
inputs; backends receive them as float32 MindSpore tensors (or bf16-rounded when the case says so). Forward
outputs are compared elementwise; backward is checked as directional derivatives against central finite
differences of the reference (2 random directions per differentiable input), so no backend grades itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import registry


@dataclass
class Case:
    op: str
    name: str
    make: Callable[[np.random.Generator], Tuple[tuple, dict]]   # -> (args, static kwargs)
    grad_args: Sequence[int] = ()          # positions of differentiable float inputs
    int_args: Sequence[int] = ()           # positions of integer inputs (passed as int32)
    tol_scale: float = 1.0                 # loosen the backend's declared tolerance for hard cases
    bf16_inputs: bool = False              # round float inputs to bf16 first (what Ascend feeds)
    seed: int = 0


@dataclass
class Row:
    op: str
    backend: str
    case: str
    kind: str                  # "fwd" or "bwd"
    shapes: str
    max_abs: float
    max_rel: float
    cosine: float
    tol: Tuple[float, float]
    ok: bool
    note: str = ""

    def as_dict(self) -> Dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def all_cases() -> List[Case]:
    from .mhc.cases import CASES as mhc
    from .moe.cases import CASES as moe
    from .attention.cases import CASES as attention
    from .muon.cases import CASES as muon
    from .engram.cases import CASES as engram
    return list(mhc) + list(moe) + list(attention) + list(muon) + list(engram)


def _bf16_round(a: np.ndarray) -> np.ndarray:
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32).astype(np.float64)


def _tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _diff(out, ref):
    """|out - ref| with equal values (including equal infinities, e.g. -inf score slots) counted as 0."""
    with np.errstate(invalid="ignore"):
        return np.where(out == ref, 0.0, np.abs(out - ref))


def _metrics(out: np.ndarray, ref: np.ndarray):
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    diff = _diff(out, ref)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / (np.abs(ref) + 1e-6)).max()) if diff.size else 0.0
    fin = np.isfinite(out) & np.isfinite(ref)
    den = np.linalg.norm(out[fin]) * np.linalg.norm(ref[fin])
    cos = float(np.sum(out[fin] * ref[fin]) / den) if den > 0 else (1.0 if max_abs == 0 else 0.0)
    return max_abs, max_rel, cos


def _close(out, ref, atol, rtol) -> bool:
    out = np.asarray(out, np.float64)
    with np.errstate(invalid="ignore"):
        return bool(np.all(_diff(out, ref) <= atol + rtol * np.where(np.isfinite(ref), np.abs(ref), 0.0)))


def _to_ms(args, case: Case):
    import mindspore as ms
    conv = []
    for i, a in enumerate(args):
        if isinstance(a, np.ndarray):
            if i in case.int_args or np.issubdtype(a.dtype, np.integer):
                conv.append(ms.Tensor(a.astype(np.int32)))
            else:
                conv.append(ms.Tensor(a.astype(np.float32)))
        else:
            conv.append(a)
    return conv


def _kw_to_ms(kw):
    import mindspore as ms
    return {k: (ms.Tensor(v.astype(np.int32) if np.issubdtype(v.dtype, np.integer) else v.astype(np.float32))
                if isinstance(v, np.ndarray) else v) for k, v in kw.items()}


def _run_backend(backend, args, kw, case: Case):
    outs = backend.fn(*_to_ms(args, case), **_kw_to_ms(kw))
    return [o.asnumpy() if hasattr(o, "asnumpy") else np.asarray(o) for o in _tuple(outs)]


def _backend_grads(backend, args, kw, case: Case, cots):
    import mindspore as ms
    ms_args = _to_ms(args, case)
    ms_kw = _kw_to_ms(kw)
    pos = tuple(case.grad_args)

    def loss(*diff):
        full = list(ms_args)
        for p, d in zip(pos, diff):
            full[p] = d
        outs = _tuple(backend.fn(*full, **ms_kw))
        total = 0
        for o, c in zip(outs, cots):
            if c is not None:
                total = total + (o * ms.Tensor(c.astype(np.float32))).sum()
        return total

    grads = ms.grad(loss, grad_position=tuple(range(len(pos))))(*[ms_args[p] for p in pos])
    return [g.asnumpy() for g in _tuple(grads)]


def _ref_loss(ref_fn, args, kw, cots):
    outs = _tuple(ref_fn(*args, **kw))
    return sum(float(np.sum(np.asarray(o, np.float64) * c)) for o, c in zip(outs, cots) if c is not None)


def run(op: Optional[str] = None, backend: Optional[str] = None, cases: Optional[List[Case]] = None,
        check_grad: bool = True, grad_mutations: Optional[Dict[str, Callable]] = None) -> List[Row]:
    """Rows for every (case, available backend): "fwd", and "bwd" for cases with grad_args.

    grad_mutations {name: f(grad) -> grad} adds a "bwd[name]" row per mutation, graded on f(backend gradient)
    with the same reference derivatives: the check that the backward tolerance can fail (tests/ops)."""
    rows: List[Row] = []
    for case in cases if cases is not None else all_cases():
        if op and case.op != op:
            continue
        rng = np.random.default_rng(case.seed)
        args, kw = case.make(rng)
        if case.bf16_inputs:
            args = tuple(_bf16_round(a) if isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.floating) else a
                         for a in args)
        # The reference sees exactly what the backends see: float32-representable inputs, in float64.
        args = tuple(a.astype(np.float32).astype(np.float64)
                     if isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.floating) else a for a in args)
        ref_b = next(b for b in registry.backends(case.op) if b.name == "reference")
        ref = [np.asarray(r) for r in _tuple(ref_b.fn(*args, **kw))]
        shapes = " ".join("x".join(map(str, a.shape)) for a in args if isinstance(a, np.ndarray))
        for b in registry.backends(case.op):
            if b.name == "reference" or (backend and b.name != backend) or not b.available():
                continue
            atol, rtol = (t * case.tol_scale for t in b.tolerance)
            try:
                outs = _run_backend(b, args, kw, case)
            except Exception as e:  # a crashing backend is a failed row, not a crashed harness
                rows.append(Row(case.op, b.name, case.name, "fwd", shapes, math.inf, math.inf, 0.0, (atol, rtol),
                                False, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"))
                continue
            # the outputs' count and shapes first: an empty result (S < ratio, no tokens routed) must still be the
            # right empty shape
            ok, worst = len(outs) == len(ref), (0.0, 0.0, 1.0)
            for o, r in zip(outs, ref):
                if tuple(o.shape) != tuple(r.shape):
                    ok, worst = False, (math.inf, math.inf, 0.0)
                    continue
                if np.issubdtype(r.dtype, np.integer):
                    same = np.array_equal(o.astype(np.int64), r.astype(np.int64))
                    ok &= same
                    m = (0.0 if same else 1.0, 0.0 if same else 1.0, 1.0 if same else 0.0)
                else:
                    ok &= _close(o, r, atol, rtol)
                    m = _metrics(o, r)
                worst = (max(worst[0], m[0]), max(worst[1], m[1]), min(worst[2], m[2]))
            rows.append(Row(case.op, b.name, case.name, "fwd", shapes, *worst, (atol, rtol), bool(ok)))
            if not (check_grad and case.grad_args and b.grad):     # grad=False: the backend has no backward
                continue
            rows.extend(_grad_row(case, b, ref_b, args, kw, ref, shapes, atol, rtol, rng, grad_mutations))
    return rows


def _unit(v):
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _grad_check(case, ref_b, args, kw, cots, grads, atol, rtol, rng):
    """(ok, worst_abs, worst_rel, worst_cos, note) of backend gradients `grads` against the reference.

    Per differentiable input, two unit directions v: the backend's own gradient direction g/|g| (a random one when
    g = 0) and a random one. The backend's directional derivative g·v is compared with a central difference of the
    reference loss along v (fd):
      along g/|g|:  |g·v - fd| <= 10·rtol·max(|g·v|, |fd|) + 10·atol — g·v = |g|, so any error in the gradient's
                    magnitude (a 10% scale, a dropped factor) fails, whatever the input size;
      random v:     |g·v - fd| <= 10·rtol·|g| + 10·atol — errors orthogonal to g (wrong elements, swapped rows).
    A gradient of the wrong shape fails. Where the true gradient is exactly zero (fd = 0, e.g. an empty output)
    the row passes only if the backend's gradient is below 10·atol too."""
    ok, worst_abs, worst_rel, worst_cos, note = True, 0.0, 0.0, 1.0, ""
    for p, g in zip(case.grad_args, grads):
        if tuple(g.shape) != tuple(np.shape(args[p])):
            return False, math.inf, math.inf, 0.0, f"grad of input {p} has shape {tuple(g.shape)}, " \
                                                   f"expected {tuple(np.shape(args[p]))}"
        g = g.astype(np.float64)
        gn = float(np.linalg.norm(g))
        rand = _unit(rng.standard_normal(args[p].shape))
        for along_g, v in ((True, _unit(g) if gn > 0 else rand), (False, rand)):
            eps = 1e-6 * max(1.0, float(np.abs(args[p]).max()))
            plus = list(args)
            minus = list(args)
            plus[p] = args[p] + eps * v
            minus[p] = args[p] - eps * v
            fd = (_ref_loss(ref_b.fn, plus, kw, cots) - _ref_loss(ref_b.fn, minus, kw, cots)) / (2 * eps)
            got = float(np.sum(g * v))
            err = abs(got - fd)
            bound = 10 * rtol * (max(abs(got), abs(fd)) if along_g else gn) + 10 * atol
            ok &= bool(err <= bound)
            worst_abs = max(worst_abs, err)
            worst_rel = max(worst_rel, err / (abs(fd) + 1e-6))
            worst_cos = min(worst_cos, 1.0 - err / (max(gn, abs(fd)) + 1e-12))
    return ok, worst_abs, worst_rel, worst_cos, note


def _grad_row(case, b, ref_b, args, kw, ref, shapes, atol, rtol, rng, mutations=None) -> List[Row]:
    cots = [None if np.issubdtype(r.dtype, np.integer) else rng.standard_normal(r.shape) for r in ref]
    try:
        grads = _backend_grads(b, args, kw, case, cots)
    except Exception as e:
        return [Row(case.op, b.name, case.name, "bwd", shapes, math.inf, math.inf, 0.0, (atol, rtol), False,
                    f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")]
    rows = []
    for name, fn in [("", None)] + list((mutations or {}).items()):
        g = grads if fn is None else [fn(x) for x in grads]
        ok, wa, wr, wc, note = _grad_check(case, ref_b, args, kw, cots, g, atol, rtol,
                                           np.random.default_rng(case.seed + 1))
        rows.append(Row(case.op, b.name, case.name, "bwd" + (f"[{name}]" if name else ""), shapes, wa, wr, wc,
                        (atol, rtol), ok, note or "directional derivatives vs central differences of the reference"))
    return rows


def format_table(rows: List[Row]) -> str:
    head = f"{'op':<18}{'backend':<11}{'case':<26}{'pass':<5}{'max_abs':>10}{'max_rel':>10}{'cosine':>11}  shapes"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.op:<18}{r.backend:<11}{(r.case + '/' + r.kind)[:25]:<26}{'ok' if r.ok else 'FAIL':<5}"
                     f"{r.max_abs:>10.2e}{r.max_rel:>10.2e}{r.cosine:>11.7f}  {r.shapes}"
                     + (f"  [{r.note}]" if r.note and not r.ok else ""))
    n_fail = sum(not r.ok for r in rows)
    lines.append(f"{len(rows) - n_fail} passed, {n_fail} failed")
    return "\n".join(lines)
