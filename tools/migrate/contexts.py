"""Where a string literal is certainly a device or a process-group backend (what ``--apply`` may rewrite).

A ``"cuda"`` literal is a device only in some places: ``device=...``, ``torch.device(...)``,
``x.to(...)``, ``torch.autocast(...)``, ``torch.amp.GradScaler(...)``, ``x.device.type == ...``, a
variable or function named ``*device``, argparse ``--device`` defaults. The same text is something else
as a dict key, an attribute name (``setattr(torch.version, "cuda", ...)``), or a transport name; rewriting
those changes behaviour. This module classifies literal nodes once per file:

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


def classify_strings(tree: ast.AST, resolve: Callable[[ast.AST], Optional[str]]) -> Dict[int, str]:
    """``id(node) -> "device" | "backend" | "none"`` for str literals and f-strings in known contexts."""
    out: Dict[int, str] = {}

    def mark(node: Optional[ast.AST], kind: str) -> None:
        """Mark a value expression: literals directly; both arms of `a if c else b`; tuple/list items."""
        if node is None:
            return
        if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            out.setdefault(id(node), kind)
        elif isinstance(node, ast.IfExp):
            mark(node.body, kind)
            mark(node.orelse, kind)
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            for e in node.elts:
                mark(e, kind)
        elif isinstance(node, ast.BoolOp):  # `os.environ.get(...) or "cuda"`
            for v in node.values:
                mark(v, kind)

    def kind_of_target(t: ast.AST) -> Optional[str]:
        name = _name_of(t)
        if DEVICE_NAME.search(name):
            return "device"
        if BACKEND_NAME.search(name):
            return "backend"
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            qual = resolve(func) if isinstance(func, (ast.Name, ast.Attribute)) else None
            fname = _name_of(func)
            for kw in node.keywords:
                if kw.arg in _DEVICE_KWARGS:
                    mark(kw.value, "device")
                elif kw.arg in _BACKEND_KWARGS:
                    mark(kw.value, "backend")
            if node.args:
                if qual in _DEVICE_ARG0 or (isinstance(func, ast.Attribute) and func.attr == "to" and qual is None):
                    mark(node.args[0], "device")
                elif qual in _BACKEND_ARG0:
                    mark(node.args[0], "backend")
                elif isinstance(func, ast.Name) and func.id in _NAME_ARG1 and len(node.args) >= 2:
                    mark(node.args[1], "none")
                elif fname == "add_argument" and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                    flag = node.args[0].value
                    kind = "device" if _ARGPARSE_DEVICE.match(flag) else "backend" if _ARGPARSE_BACKEND.match(flag) else None
                    if kind:
                        for kw in node.keywords:
                            if kw.arg in ("default", "choices", "const"):
                                mark(kw.value, kind)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                targets = t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t]
                kinds = {kind_of_target(x) for x in targets} - {None}
                if len(kinds) == 1 and len(targets) == 1:
                    mark(node.value, kinds.pop())
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and node.value is not None:
            kind = kind_of_target(node.target)
            if kind:
                mark(node.value, kind)
        elif isinstance(node, ast.keyword):
            pass
        elif isinstance(node, ast.Compare):
            sides = [node.left] + list(node.comparators)
            kind = None
            for s in sides:
                if isinstance(s, ast.Attribute) and s.attr in ("type", "device_type"):
                    kind = "device"
                elif isinstance(s, ast.Name) and DEVICE_NAME.search(s.id):
                    kind = "device"
                elif isinstance(s, ast.Call) and resolve(s.func) in ("torch.distributed.get_backend",):
                    kind = "backend"
            if kind:
                for s in sides:
                    mark(s, kind)
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and isinstance(k.value, str):
                    if DEVICE_NAME.search(k.value):
                        mark(v, "device")
                    elif BACKEND_NAME.search(k.value):
                        mark(v, "backend")
                    else:
                        mark(k, "none")
        elif isinstance(node, ast.Subscript):
            mark(node.slice, "none")
        elif isinstance(node, ast.arguments):  # def f(device="cuda", *, backend="nccl")
            pos = node.posonlyargs + node.args
            pairs = list(zip(pos[len(pos) - len(node.defaults):], node.defaults))
            pairs += [(a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults) if d is not None]
            for a, d in pairs:
                kind = kind_of_target(ast.Name(id=a.arg))
                if kind:
                    mark(d, kind)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and ("dev" in node.name or "backend" in node.name):
            kind = kind_of_target(ast.Name(id=node.name.removeprefix("get_")))
            if kind:
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Return):
                        mark(sub.value, kind)
    return out
