"""bf16 MoE router heuristic.

Why: on NPU the router GEMM returns bf16 where CUDA code paths often end up with fp32 logits, and top-k
over bf16 logits picks different experts (sglang #34861, vllm-ascend #16956: "expert-selection errors").
Statically we cannot know dtypes, so we look for the two common router shapes and flag the GEMM when
none of its operands is visibly cast to fp32:

1. a gate class (``Gate``, ``MoEGate``, ``TopKRouter``...) whose methods call a GEMM
   (``F.linear``, ``torch.matmul``, ``@``, DeepSeek's own ``linear`` helper);
2. an MoE block holding ``self.gate = nn.Linear(...)`` and calling ``self.gate(x)`` (Mixtral/Qwen style).

"Visibly fp32": an operand contains ``.float()``, ``.to(torch.float32)``, ``.type(torch.float32)``,
``.to(dtype=torch.float)`` or is a local name assigned from such an expression earlier in the function.
"""
from __future__ import annotations

import ast
from typing import Callable, Dict, Iterator, List, Optional, Set, Tuple

_FP32 = {"torch.float32", "torch.float", "float32", "mindspore.float32", "numpy.float32"}
_CAST_METHODS = {"to", "type", "astype"}

Resolver = Callable[[ast.AST], Optional[str]]


def find_router_hazards(cls: ast.ClassDef, params: Dict, resolve: Resolver) -> List[Tuple[ast.AST, str]]:
    """(gemm node, short text) for every router GEMM in ``cls`` that is not visibly fp32."""
    out: List[Tuple[ast.AST, str]] = []
    is_gate, is_moe = params["gate_class_re"].search(cls.name), params["moe_class_re"].search(cls.name)
    if not (is_gate or is_moe):
        return out
    methods = [n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    attrs = _fp32_attrs(methods, resolve)
    if is_gate:
        for fn in methods:
            fp32_names = _fp32_locals(fn, resolve)
            for gemm, operands in _gemms(fn, params, resolve):
                if _fp32_output(gemm, resolve):
                    continue  # torch.mm(..., out_dtype=torch.float32): fp32 logits from a bf16 GEMM
                if not any(_is_fp32(op, fp32_names, resolve, attrs) for op in operands):
                    out.append((gemm, _short(gemm)))
    if is_moe:
        gate_attrs = _linear_gate_attrs(methods, params, resolve)
        if gate_attrs:
            for fn in methods:
                fp32_names = _fp32_locals(fn, resolve)
                for call in _walk_calls(fn):
                    f = call.func
                    if (isinstance(f, ast.Attribute) and f.attr in gate_attrs and _is_self(f.value)
                            and not any(_is_fp32(a, fp32_names, resolve, attrs) for a in call.args)):
                        out.append((call, _short(call)))
    return out


def _walk_calls(fn: ast.AST) -> Iterator[ast.Call]:
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            yield node


def _gemms(fn: ast.AST, params: Dict, resolve: Resolver) -> Iterator[Tuple[ast.AST, List[ast.AST]]]:
    for node in ast.walk(fn):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
            yield node, [node.left, node.right]
        elif isinstance(node, ast.Call):
            f = node.func
            q = resolve(f) if isinstance(f, (ast.Name, ast.Attribute)) else None
            if q in params["gemm_names"] or (
                q is None and isinstance(f, ast.Name) and f.id in params["local_gemm_names"]
            ):
                yield node, list(node.args) + [k.value for k in node.keywords if k.arg not in ("out_dtype", "dtype")]


def _fp32_output(gemm: ast.AST, resolve: Resolver) -> bool:
    return isinstance(gemm, ast.Call) and any(
        k.arg in ("out_dtype", "dtype") and _names_fp32(k.value, resolve) for k in gemm.keywords)


def _linear_gate_attrs(methods, params: Dict, resolve: Resolver) -> Set[str]:
    """Attributes assigned ``nn.Linear(...)`` whose name looks like a router (``self.gate = nn.Linear``)."""
    attrs = set()
    for fn in methods:
        for node in ast.walk(fn):
            if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
                continue
            if resolve(node.value.func) != "torch.nn.Linear":
                continue
            for t in node.targets:
                if isinstance(t, ast.Attribute) and _is_self(t.value) and params["gate_attr_re"].search(t.attr):
                    attrs.add(t.attr)
    return attrs


def _is_self(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def _fp32_locals(fn: ast.AST, resolve: Resolver) -> Set[str]:
    """Local names bound to a visibly-fp32 expression (``x = x.float()``) anywhere in the function.

    Order-insensitive on purpose: a false "safe" is cheaper for users than noise on correct code.
    """
    names: Set[str] = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign) and _is_fp32(node.value, set(), resolve):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    names.add(t.id)
    return names


def _fp32_attrs(methods, resolve: Resolver) -> Set[str]:
    """`self.X` the class keeps in fp32: `self.X = nn.Parameter(torch.empty(..., dtype=torch.float32))`,
    `self.X = nn.Linear(..., dtype=torch.float32)`, `self.X = <...>.float()`, or `self.X.float()`."""
    attrs: Set[str] = set()
    for fn in methods:
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign):
                fp32 = any(k.arg == "dtype" and _names_fp32(k.value, resolve)
                           for c in ast.walk(node.value) if isinstance(c, ast.Call) for k in c.keywords)
                if fp32 or _is_fp32(node.value, set(), resolve):
                    attrs.update(t.attr for t in node.targets if isinstance(t, ast.Attribute) and _is_self(t.value))
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and _is_fp32(node.value, set(), resolve):
                f = node.value.func
                if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Attribute) and _is_self(f.value.value):
                    attrs.add(f.value.attr)
    return attrs


def _self_attr_root(node: ast.AST) -> Optional[str]:
    """`self.gate.weight.dtype` -> 'gate'."""
    while isinstance(node, ast.Attribute):
        if _is_self(node.value):
            return node.attr
        node = node.value
    return None


def _is_fp32(expr: ast.AST, fp32_names: Set[str], resolve: Resolver, fp32_attrs: Set[str] = frozenset()) -> bool:
    for node in ast.walk(expr):
        if isinstance(node, ast.Name) and node.id in fp32_names:
            return True
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr == "float" and not node.args:
            return True
        if node.func.attr in _CAST_METHODS or node.func.attr == "type_as":
            for a in list(node.args) + [k.value for k in node.keywords if k.arg in (None, "dtype")]:
                if _names_fp32(a, resolve) or (fp32_attrs and _self_attr_root(a) in fp32_attrs):
                    return True  # .to(torch.float32) / .to(self.gate.weight.dtype) of an fp32 gate
    return False


def _names_fp32(node: ast.AST, resolve: Resolver) -> bool:
    if isinstance(node, ast.Constant) and node.value in ("float32", "float", "fp32"):
        return True
    if isinstance(node, (ast.Name, ast.Attribute)):
        q = resolve(node)
        return q in _FP32
    return False


def _short(node: ast.AST, limit: int = 60) -> str:
    try:
        s = ast.unparse(node)
    except Exception:  # pragma: no cover - unparse is total on parsed trees
        s = type(node).__name__
    return s if len(s) <= limit else s[: limit - 3] + "..."
