"""Where a string literal is certainly a device or a process-group backend (what ``--apply`` may rewrite).

A ``"cuda"`` literal is a device only in some places: ``device=...``, ``torch.device(...)``,
``x.to(...)``, ``torch.autocast(...)``, ``torch.amp.GradScaler(...)``, ``x.device.type == ...``, a
variable or function named ``*device``, argparse ``--device`` defaults. The same text is something else
as a dict key, an attribute name (``setattr(torch.version, "cuda", ...)``), or a transport name; rewriting
those changes behaviour. The scanner calls ``classify_node`` for each node of CONTEXT_NODE_TYPES during
its single traversal (parents before children), filling a map for the literals:

  "device"   certainly a device (rewrite 'cuda' -> 'npu')
  "backend"  certainly a torch.distributed backend (rewrite 'nccl' -> 'hccl')
  "none"     certainly not a device (dict key, subscript, getattr/setattr name): not even reported
  (absent)   unknown: reported as uncertain, never rewritten
"""
from __future__ import annotations

import ast
import re
from typing import Callable, Dict, Optional

DEVICE_NAME = re.compile(r"(?i)(^|_)(device|dev)(_?type|_?name|_?str)?$")
BACKEND_NAME = re.compile(r"(?i)(^|_)backend$")
_DEVICE_KWARGS = {"device", "device_type", "map_location", "device_name"}
_BACKEND_KWARGS = {"backend", "dist_backend"}
# resolved callables whose first positional argument is a device
_DEVICE_ARG0 = {
    "torch.device", "torch.autocast", "torch.amp.autocast", "torch.amp.GradScaler", "torch.set_default_device",
    "torch.Generator", "torch.distributed.device_mesh.init_device_mesh", "torch.distributed.init_device_mesh",
    "torch.amp.autocast_mode.autocast", "torch.amp.grad_scaler.GradScaler", "torch.get_device_module",
}
_BACKEND_ARG0 = {"torch.distributed.init_process_group", "torch.distributed.new_group",
                 "torch.distributed.distributed_c10d.init_process_group", "torch.distributed.new_subgroups"}
_NAME_ARG1 = {"getattr", "setattr", "hasattr", "delattr"}
_ARGPARSE_DEVICE = re.compile(r"^--?(\w+[-_])?(device|dev)$")
_ARGPARSE_BACKEND = re.compile(r"^--?(\w+[-_])?backend$")


_INDEXED_DEVICE = re.compile(r"^cuda:(\d+|\{\})$")


def context_of_value(value: str) -> Optional[str]:
    """``"cuda:0"`` / ``f"cuda:{rank}"``: the ``type:index`` form is device syntax wherever it appears."""
    return "device" if _INDEXED_DEVICE.match(value) else None


def _name_of(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


CONTEXT_NODE_TYPES = (ast.Call, ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Compare, ast.Dict, ast.Subscript,
                      ast.arguments, ast.FunctionDef, ast.AsyncFunctionDef)


def _mark(node: Optional[ast.AST], kind: str, out: Dict[int, str]) -> None:
    """Mark a value expression: literals directly; both arms of `a if c else b`; tuple/list items."""
    if node is None:
        return
    if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        out.setdefault(id(node), kind)
    elif isinstance(node, ast.IfExp):
        _mark(node.body, kind, out)
        _mark(node.orelse, kind, out)
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        for e in node.elts:
            _mark(e, kind, out)
    elif isinstance(node, ast.BoolOp):  # `os.environ.get(...) or "cuda"`
        for v in node.values:
            _mark(v, kind, out)


def _target_name(node: ast.AST) -> str:
    """Name an assignment stores to: `device`, `self.device`, `kwargs["device_type"]`."""
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return node.slice.value
    return _name_of(node)


def _kind_of_name(name: str) -> Optional[str]:
    if DEVICE_NAME.search(name):
        return "device"
    if BACKEND_NAME.search(name):
        return "backend"
    return None


def classify_node(node: ast.AST, resolve: Callable[[ast.AST], Optional[str]], out: Dict[int, str]) -> None:
    """Mark the literals ``node`` puts in a known context. The scanner calls this for every node of
    CONTEXT_NODE_TYPES during its one traversal, parents before children."""
    if isinstance(node, ast.Call):
        func = node.func
        for kw in node.keywords:
            if kw.arg in _DEVICE_KWARGS:
                _mark(kw.value, "device", out)
            elif kw.arg in _BACKEND_KWARGS:
                _mark(kw.value, "backend", out)
        if node.args:
            qual = resolve(func) if isinstance(func, (ast.Name, ast.Attribute)) else None
            if qual in _DEVICE_ARG0 or (isinstance(func, ast.Attribute) and func.attr == "to" and qual is None):
                _mark(node.args[0], "device", out)
            elif qual in _BACKEND_ARG0:
                _mark(node.args[0], "backend", out)
            elif isinstance(func, ast.Name) and func.id in _NAME_ARG1 and len(node.args) >= 2:
                _mark(node.args[1], "none", out)
            elif (_name_of(func) == "add_argument" and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)):
                flag = node.args[0].value
                kind = "device" if _ARGPARSE_DEVICE.match(flag) else "backend" if _ARGPARSE_BACKEND.match(flag) else None
                if kind:
                    for kw in node.keywords:
                        if kw.arg in ("default", "choices", "const"):
                            _mark(kw.value, kind, out)
    elif isinstance(node, ast.Assign):
        for target in node.targets:
            if isinstance(target, (ast.Tuple, ast.List)):
                # `device, dtype = "cuda", torch.bfloat16`: pair the elements
                if isinstance(node.value, (ast.Tuple, ast.List)) and len(node.value.elts) == len(target.elts):
                    for t, v in zip(target.elts, node.value.elts):
                        kind = _kind_of_name(_target_name(t))
                        if kind:
                            _mark(v, kind, out)
            else:
                kind = _kind_of_name(_target_name(target))
                if kind:
                    _mark(node.value, kind, out)
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        kind = _kind_of_name(_target_name(node.target))
        if kind and node.value is not None:
            _mark(node.value, kind, out)
    elif isinstance(node, ast.Compare):
        sides = [node.left] + list(node.comparators)
        kind = None
        for side in sides:
            if isinstance(side, ast.Attribute) and side.attr in ("type", "device_type"):
                kind = "device"
            elif isinstance(side, ast.Name) and DEVICE_NAME.search(side.id):
                kind = "device"
            elif isinstance(side, ast.Call) and resolve(side.func) == "torch.distributed.get_backend":
                kind = "backend"
        if kind:
            for side in sides:
                _mark(side, kind, out)
    elif isinstance(node, ast.Dict):
        for k, v in zip(node.keys, node.values):
            if isinstance(k, ast.Constant) and isinstance(k.value, str):
                kind = _kind_of_name(k.value)
                if kind:
                    _mark(v, kind, out)
                else:
                    _mark(k, "none", out)
    elif isinstance(node, ast.Subscript):
        _mark(node.slice, "none", out)
    elif isinstance(node, ast.arguments):  # def f(device="cuda", *, backend="nccl")
        pos = node.posonlyargs + node.args
        pairs = list(zip(pos[len(pos) - len(node.defaults):], node.defaults))
        pairs += [(a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults) if d is not None]
        for a, d in pairs:
            kind = _kind_of_name(a.arg)
            if kind:
                _mark(d, kind, out)
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and ("dev" in node.name or "backend" in node.name):
        kind = _kind_of_name(node.name.removeprefix("get_"))
        if kind:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Return):
                    _mark(sub.value, kind, out)
