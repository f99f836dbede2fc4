"""The one way our code calls an Ascend operator — our AscendC kernels and CANN's vendor (aclnn) operators —
and its contract stand-in on CPU.

Every Ascend operator we call has a `Contract`: its inputs in OpDef order (name, required/optional, the dtype
columns of the OpDef), outputs, attributes and documented limits. A binding builds a primitive for one static
configuration with `primitive(contract, attrs, out_shape, out_dtype, bprop, emulate)` and calls it with every input
in its OpDef position, `None` for an absent optional input (CANN binds inputs by position: dropping one shifts the
rest). What `primitive` returns depends on the target (ops/registry.py):

* on an Ascend device: AscendC -> ``ops.Custom(op_type, func_type="aot", reg_info=<from the contract>)`` (MindSpore's
  AscendC custom-op guide: reg_info input/output names must match the OpDef, else graph mode fails); vendor ->
  the MindSpore function that calls the aclnn operator (``contract.device``);
* Ascend resolution emulated on CPU (``Target.emulated``): a stand-in with the same calling convention that
  (a) checks every call against the contract at graph-compile time — input count and positions (absent optionals
  only where the OpDef says optional), each dtype against the OpDef's dtype columns, attribute names, kinds and
  values, the reg_info names, the operator's shape limits — raising `ContractError`, and (b) computes the outputs
  with `emulate` (our float64 NumPy reference) through ``ops.Custom(func_type="pyfunc")``, with the binding's own
  bprop attached, so graph mode, autodiff and the hand-written backward of the binding are all exercised.

Nothing here has run on an NPU; what the stand-ins prove is listed in docs/ascend.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import mindspore as ms
import numpy as np
from mindspore import ops

from . import registry

# An absent optional input reaches the stand-in kernel as this marker (pyfunc kernels take tensors only); no
# contract input is 7-D uint8, so infer functions can tell it from a real tensor.
_ABSENT_SHAPE = (1,) * 7
_ABSENT = []     # lazily created MindSpore tensor
# Every callable handed to MindSpore stays referenced for the life of the process: the graph compiler caches parsed
# functions by object identity, and a collected closure's id can be reused by a new one (a stale parse: seen as
# "The parameters number of the function is 2, but the number of provided arguments is 7").
_KEEP = []


class ContractError(ValueError):
    """A call breaks the operator's documented contract (what the NPU would reject or compute wrongly)."""


@dataclass(frozen=True)
class In:
    name: str
    optional: bool
    dtypes: Tuple[str, ...]            # one entry per OpDef dtype column ("float32", "bfloat16", "int32", ...)


@dataclass(frozen=True)
class Attr:
    name: str
    kind: str                          # "int" | "float" | "bool"
    required: bool = False


@dataclass(frozen=True)
class Contract:
    op_type: str                       # OpDef type (AscendC) or aclnn operator name (vendor)
    kind: str                          # "ascendc" | "aclnn"
    inputs: Tuple[In, ...]
    outputs: Tuple[str, ...]
    attrs: Tuple[Attr, ...]
    limits: Optional[Callable[[Dict[str, Optional[tuple]], Dict[str, object]], Optional[str]]] = None
    doc: str = ""                      # layout / semantic differences (vendor mappings)
    device: Optional[Callable] = field(default=None, compare=False)   # vendor: attrs -> callable on the NPU

    def column_check(self, dtypes: Dict[str, str]) -> Optional[str]:
        """None when one OpDef dtype column admits every present input's dtype, else the mismatch."""
        ncol = max(len(i.dtypes) for i in self.inputs)
        for c in range(ncol):
            if all(dtypes[i.name] is None or dtypes[i.name] == i.dtypes[c % len(i.dtypes)] for i in self.inputs):
                return None
        got = ", ".join(f"{k}={v}" for k, v in dtypes.items() if v is not None)
        cols = "; ".join(", ".join(f"{i.name}={i.dtypes[c % len(i.dtypes)]}" for i in self.inputs)
                         for c in range(ncol))
        return f"dtypes ({got}) match no OpDef column ({cols})"


def _dtype_name(d) -> str:
    s = str(d).lower()
    for n in ("bfloat16", "float16", "float32", "float64", "int64", "int32", "uint8", "int8", "bool"):
        if n in s:
            return n
    return s


def check_attrs(contract: Contract, attrs: Dict[str, object]) -> None:
    """Attribute names and kinds against the contract (values are checked by `contract.limits`)."""
    known = {a.name: a for a in contract.attrs}
    for k, v in attrs.items():
        if k not in known:
            raise ContractError(f"{contract.op_type}: unknown attribute '{k}' (OpDef has {', '.join(known)})")
        want = {"int": int, "float": (int, float), "bool": bool}[known[k].kind]
        if isinstance(v, bool) != (known[k].kind == "bool") or not isinstance(v, want):
            raise ContractError(f"{contract.op_type}: attribute '{k}'={v!r} must be {known[k].kind}")
    for a in contract.attrs:
        if a.required and a.name not in attrs:
            raise ContractError(f"{contract.op_type}: required attribute '{a.name}' missing")


def reg_info(contract: Contract, attrs: Dict[str, object]):
    """MindSpore reg_info for an AscendC custom op: inputs/outputs named and ordered as in the OpDef, optional
    inputs marked optional, attributes with this primitive's values."""
    from mindspore.ops import CustomRegOp, DataType
    reg = CustomRegOp(contract.op_type)
    for i, x in enumerate(contract.inputs):
        reg = reg.input(i, x.name, "optional" if x.optional else "required")
    for i, name in enumerate(contract.outputs):
        reg = reg.output(i, name)
    for a in contract.attrs:
        if a.name in attrs:
            v = attrs[a.name]
            reg = reg.attr(a.name, "required", a.kind, value=(str(v).lower() if a.kind == "bool" else v))
    reg = reg.dtype_format(*([DataType.None_None] * (len(contract.inputs) + len(contract.outputs))))
    return reg.target("Ascend").get_op_info()


def check_reg_info(contract: Contract, info) -> None:
    """reg_info (as produced for ops.Custom) names every OpDef input and output in order."""
    if not info:
        raise ContractError(f"{contract.op_type}: no reg_info (graph mode binds AscendC inputs by these names)")
    ins = [(x["name"], x.get("paramType", "required")) for x in sorted(info["inputs"], key=lambda x: x["index"])]
    want = [(x.name, "optional" if x.optional else "required") for x in contract.inputs]
    if ins != want:
        raise ContractError(f"{contract.op_type}: reg_info inputs {ins} != OpDef {want}")
    outs = [x["name"] for x in sorted(info["outputs"], key=lambda x: x["index"])]
    if outs != list(contract.outputs):
        raise ContractError(f"{contract.op_type}: reg_info outputs {outs} != OpDef {list(contract.outputs)}")


def primitive(contract: Contract, attrs: Dict[str, object], out_shape: Callable, out_dtype: Callable,
              bprop: Optional[Callable] = None, emulate: Optional[Callable] = None):
    """The callable of `contract` with these attributes for the current target (see the module docstring).
    Call it with every input in OpDef position, None for an absent optional one."""
    check_attrs(contract, attrs)
    _KEEP.append((out_shape, out_dtype, bprop, emulate))
    if registry.target().emulated:
        if emulate is None:
            raise ContractError(f"{contract.op_type}: no CPU emulation registered")
        info = reg_info(contract, attrs) if contract.kind == "ascendc" else None
        prim = _standin(contract, dict(attrs), out_shape, out_dtype, bprop, emulate, info)
    elif contract.kind == "aclnn":
        prim = contract.device(attrs)
    else:
        prim = ops.Custom(contract.op_type, out_shape=_limits_checked(contract, attrs, out_shape),
                          out_dtype=out_dtype, func_type="aot", reg_info=reg_info(contract, attrs), bprop=bprop)
    _KEEP.append(prim)
    return prim


def _limits_checked(contract: Contract, attrs, out_shape):
    """out_shape that first checks the contract's shape limits (graph compile time, on the device too)."""
    if contract.limits is None:
        return out_shape

    def infer(*shapes):
        why = contract.limits({i.name: (tuple(s) if s is not None else None)
                               for i, s in zip(contract.inputs, shapes)}, attrs)
        if why:
            raise ContractError(f"{contract.op_type}: {why}")
        return out_shape(*shapes)
    _KEEP.append(infer)
    return infer


# ------------------------------------------------------------------------------------------------ stand-in
def _absent():
    if not _ABSENT:
        _ABSENT.append(ms.Tensor(np.zeros(_ABSENT_SHAPE, np.uint8)))
    return _ABSENT[0]


def _is_absent_shape(s) -> bool:
    return s is not None and tuple(s) == _ABSENT_SHAPE


def _standin(contract, attrs, out_shape, out_dtype, bprop, emulate, info):
    if contract.kind == "ascendc":
        check_reg_info(contract, info)
    n = len(contract.inputs)
    seen = {}

    def _shapes(shapes):
        if len(shapes) != n:
            raise ContractError(f"{contract.op_type}: called with {len(shapes)} inputs, the OpDef has {n} "
                                f"({', '.join(i.name for i in contract.inputs)}); pass None for an absent optional")
        return [None if _is_absent_shape(s) else s for s in shapes]

    def infer_shape(*shapes):
        shapes = _shapes(shapes)
        for spec, s in zip(contract.inputs, shapes):
            if s is None and not spec.optional:
                raise ContractError(f"{contract.op_type}: required input '{spec.name}' is absent")
        if contract.limits is not None:
            why = contract.limits({i.name: (tuple(s) if s is not None else None)
                                   for i, s in zip(contract.inputs, shapes)}, attrs)
            if why:
                raise ContractError(f"{contract.op_type}: {why}")
        return out_shape(*shapes)

    def infer_dtype(*dtypes):
        names = [None if _dtype_name(d) == "uint8" else _dtype_name(d) for d in dtypes]
        if len(names) != n:
            raise ContractError(f"{contract.op_type}: called with {len(names)} inputs, the OpDef has {n}")
        for spec, d in zip(contract.inputs, names):
            if d is not None and d not in spec.dtypes:
                raise ContractError(f"{contract.op_type}: input '{spec.name}' is {d}, the OpDef allows "
                                    f"{'/'.join(sorted(set(spec.dtypes)))}")
        why = contract.column_check({i.name: d for i, d in zip(contract.inputs, names)})
        if why:
            raise ContractError(f"{contract.op_type}: {why}")
        res = out_dtype(*[None if nm is None else d for nm, d in zip(names, dtypes)])
        seen["dtypes"] = res if isinstance(res, (tuple, list)) else (res,)
        return res

    def kernel(*arrays):
        ins = [None if a.shape == _ABSENT_SHAPE and a.dtype == np.uint8 else a for a in arrays]
        outs = emulate(*ins, **attrs)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        res = tuple(np.ascontiguousarray(np.asarray(o).astype(_np_dtype(d))) for o, d in zip(outs, seen["dtypes"]))
        return res if len(res) > 1 else res[0]

    kb = None
    if bprop is not None:
        def positional_bprop(*a):
            ins = a[:-2]
            call = ()
            for x in ins:
                if x.shape == _ABSENT_SHAPE:
                    call = call + (None,)
                else:
                    call = call + (x,)
            g = bprop(*(call + (a[-2], a[-1])))
            res = ()
            for i in range(len(ins)):
                if ins[i].shape == _ABSENT_SHAPE:
                    res = res + (ops.zeros_like(ins[i]),)
                else:
                    res = res + (g[i],)
            return res
        kb = _BPROP_BY_ARITY[n](positional_bprop)
    prim = ops.Custom(_KERNEL_BY_ARITY[n](kernel), out_shape=infer_shape, out_dtype=infer_dtype,
                      func_type="pyfunc", bprop=kb)
    _KEEP.append((infer_shape, infer_dtype, kernel, kb, prim))
    absent = _absent()

    def standin(*args):
        full = ()
        for x in args:
            if x is None:
                full = full + (absent,)
            else:
                full = full + (x,)
        return prim(*full)
    return standin


def _np_dtype(d):
    return {ms.float32: np.float32, ms.float16: np.float16, ms.int32: np.int32, ms.int64: np.int64,
            ms.bool_: np.bool_, ms.float64: np.float64}.get(d, np.float32)


# pyfunc kernels and bprops must declare their exact arity (MindSpore reads it from the signature; a *args
# function fails with "Tuple/List inputs are not supported" / "bprop requires at least 2 params").
def _k1(f):
    return lambda a0: f(a0)


def _k2(f):
    return lambda a0, a1: f(a0, a1)


def _k3(f):
    return lambda a0, a1, a2: f(a0, a1, a2)


def _k4(f):
    return lambda a0, a1, a2, a3: f(a0, a1, a2, a3)


def _k5(f):
    return lambda a0, a1, a2, a3, a4: f(a0, a1, a2, a3, a4)


def _k6(f):
    return lambda a0, a1, a2, a3, a4, a5: f(a0, a1, a2, a3, a4, a5)


def _k7(f):
    return lambda a0, a1, a2, a3, a4, a5, a6: f(a0, a1, a2, a3, a4, a5, a6)


_KERNEL_BY_ARITY = {1: _k1, 2: _k2, 3: _k3, 4: _k4, 5: _k5, 6: _k6, 7: _k7}


def _b1(f):
    def bprop(a0, out, dout):
        return f(a0, out, dout)
    return bprop


def _b2(f):
    def bprop(a0, a1, out, dout):
        return f(a0, a1, out, dout)
    return bprop


def _b3(f):
    def bprop(a0, a1, a2, out, dout):
        return f(a0, a1, a2, out, dout)
    return bprop


def _b4(f):
    def bprop(a0, a1, a2, a3, out, dout):
        return f(a0, a1, a2, a3, out, dout)
    return bprop


def _b5(f):
    def bprop(a0, a1, a2, a3, a4, out, dout):
        return f(a0, a1, a2, a3, a4, out, dout)
    return bprop


def _b6(f):
    def bprop(a0, a1, a2, a3, a4, a5, out, dout):
        return f(a0, a1, a2, a3, a4, a5, out, dout)
    return bprop


def _b7(f):
    def bprop(a0, a1, a2, a3, a4, a5, a6, out, dout):
        return f(a0, a1, a2, a3, a4, a5, a6, out, dout)
    return bprop


_BPROP_BY_ARITY = {1: _b1, 2: _b2, 3: _b3, 4: _b4, 5: _b5, 6: _b6, 7: _b7}
