"""Export the compiled forward as MINDIR (what MindSpore Lite / Ascend serving loads) or ONNX.

Shapes are static: one exported graph per (batch, length) bucket, int64 ids [B, S] in (int32 accepted too),
logits [B, S, V] out. The model is built from the portable MindSpore composite backend of every op by default,
so the file holds only standard primitives (no Custom ops pointing at this machine's kernel libraries);
`backends="auto"` exports whatever the registry picks here (e.g. the CPU C++ kernels, not portable).
ONNX (opset 11): the same model compiled with the "onnx" formulation of the few primitives MindSpore 2.10's
exporter has no converter for (ops/common.py: `rsqrt`, `ceil`, `cumsum`, `segment_sum`), then three exporter
quirks repaired in the ONNX graph (`_repair_onnx`), then `onnx.checker` (full check). A graph holding a primitive
the exporter cannot convert (e.g. Custom ops with `backends="auto"`) fails with one line naming every such op.
"""
from __future__ import annotations

import contextlib
import os
from collections import Counter
from typing import Dict

import numpy as np

from ascend_v4.ops.common import formulation


class ExportError(ValueError):
    pass


@contextlib.contextmanager
def _pinned_backends(backends: str):
    """Pin every op to `backends` (registry env pin) while the model resolves its ops."""
    if backends == "auto":
        yield
        return
    old = os.environ.get("ASCEND_V4_BACKENDS")
    os.environ["ASCEND_V4_BACKENDS"] = f"*={backends}"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ASCEND_V4_BACKENDS", None)
        else:
            os.environ["ASCEND_V4_BACKENDS"] = old


def _build(cfg, weights, seq: int, backends: str):
    from ascend_v4.model import Transformer
    from ascend_v4.weights import load_into
    with _pinned_backends(backends):
        model = Transformer(cfg, max_seq_len=seq, with_mtp=False)
    model.set_train(False)
    load_into(model, weights)
    return model


def export(cfg, weights: Dict[str, np.ndarray], batch: int, seq: int, out_path: str, fmt: str = "MINDIR",
           backends: str = "composite") -> str:
    import mindspore as ms

    fmt = fmt.upper()
    if fmt not in ("MINDIR", "ONNX"):
        raise ExportError(f"format must be MINDIR or ONNX, got {fmt}")
    if batch < 1 or seq < 1:
        raise ExportError("batch and seq must be >= 1")
    stem, ext = os.path.splitext(out_path)
    want = ".mindir" if fmt == "MINDIR" else ".onnx"
    if ext.lower() != want:
        raise ExportError(f"output for {fmt} must end in {want}, got {out_path}")
    tmp_stem = stem + ".partial"
    ids = ms.Tensor(np.zeros((batch, seq), np.int64))
    # the pin holds through compilation too: ops that choose their kernel at trace time (the C++ RMS norm) read it
    with formulation("onnx" if fmt == "ONNX" else "native"), _pinned_backends(backends):
        model = _build(cfg, weights, seq, backends)
        try:
            if fmt == "ONNX":
                ms.onnx.export(model, ids, file_name=tmp_stem + want)
            else:
                ms.export(model, ids, file_name=tmp_stem, file_format=fmt)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            _rm(tmp_stem + want)
            if fmt != "ONNX":
                raise ExportError(f"{fmt} export failed: {_first_line(str(e))}") from None
            raise ExportError(_onnx_failure(model, ids, str(e), backends)) from None
    if fmt == "ONNX":
        _repair_onnx(tmp_stem + want)
        _check_onnx(tmp_stem + want)
    os.replace(tmp_stem + want, out_path)
    return out_path


def _first_line(msg: str) -> str:
    return msg.strip().splitlines()[0] if msg.strip() else "unknown error"


# Every primitive of the composite model graph (formulation "onnx"), each converted by MindSpore 2.10's ONNX
# exporter and run by onnxruntime (tests/test_export.py exports the tiny model and checks the set still holds).
ONNX_CONVERTIBLE = frozenset((
    "Abs", "Add", "ArgMaxWithValue", "BatchMatMul", "BroadcastTo", "Cast", "ClampScalar", "Concat", "Div", "Divs",
    "Equal", "Exp", "ExpandDims", "FloorDiv", "Gather", "GatherD", "Greater", "GreaterEqual", "Less", "LessEqual",
    "LessScalar", "Log", "LogicalAnd", "LogicalOr", "MatMul", "MatMulExt", "Maximum", "Minimum", "Mul", "Muls",
    "Neg", "OneHot", "Pow", "ReLU", "ReduceMax", "ReduceMean", "Reshape", "Round", "Select", "Sigmoid", "Softmax",
    "Softplus", "Sqrt", "Stack", "StridedSlice", "Sub", "SumExt", "TopK", "Transpose",
    # graph plumbing, no ONNX node of their own
    "Depend", "Load", "MakeTuple", "TupleGetItem", "UpdateState"))


def graph_primitives(model, *inputs) -> Dict[str, set]:
    """Primitive type -> instance names (Custom: the kernel function) of `model` compiled for `inputs`, read from
    a MINDIR export of it (the graph the ONNX exporter walks)."""
    import tempfile
    import mindspore as ms
    from mindspore.train import mind_ir_pb2
    with tempfile.TemporaryDirectory() as d:
        ms.export(model, *inputs, file_name=os.path.join(d, "g"), file_format="MINDIR")
        proto = mind_ir_pb2.ModelProto()
        with open(os.path.join(d, "g.mindir"), "rb") as f:
            proto.ParseFromString(f.read())
    prims: Dict[str, set] = {}
    for p in proto.primitives:
        kind = p.op_type.rsplit(":", 1)[0]
        attrs = {a.name: a.s.decode(errors="replace") for a in p.attribute}
        prims.setdefault(kind, set()).add(attrs.get("func_name", "").rsplit(":", 1)[-1] or kind)
    return prims


def _onnx_failure(model, ids, msg: str, backends: str) -> str:
    """One line naming every primitive of the graph that MindSpore 2.10's ONNX exporter cannot convert."""
    missing = {k: v for k, v in graph_primitives(model, ids).items() if k not in ONNX_CONVERTIBLE}
    if not missing:
        return f"ONNX export failed: {_first_line(msg)}"
    names = "; ".join(f"{k} ({', '.join(sorted(v))})" if v != {k} else k for k, v in sorted(missing.items()))
    fix = ("export with --backends composite (standard primitives only)" if "Custom" in missing and
           backends != "composite" else "export MINDIR instead (--format mindir)")
    return f"ONNX export failed: MindSpore 2.10's ONNX exporter cannot convert {names}; {fix}"


def _repair_onnx(path: str) -> None:
    """Two quirks of MindSpore 2.10's ONNX exporter, repaired without changing what the graph computes:
    - its Round(x, decimals) becomes ONNX Round with two inputs (ONNX Round has one): the `decimals` input is
      dropped where it is the constant 0 (every Round of the model: half to even onto integers);
    - two FloorDivs of one tensor each emit the same Cast node under the same output name (not SSA): the
      byte-identical copy is dropped."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(path)
    init = {i.name: i for i in m.graph.initializer}
    seen, nodes = set(), []
    for node in m.graph.node:
        if node.op_type == "Round" and len(node.input) == 2:
            dec = init.get(node.input[1])
            if dec is None or numpy_helper.to_array(dec).size != 1 or numpy_helper.to_array(dec).item() != 0:
                _rm(path)
                raise ExportError(f"ONNX export failed: Round node {node.name} rounds to non-zero decimals, which "
                                  f"ONNX Round cannot express")
            del node.input[1]
        key = node.SerializeToString()
        if key in seen:
            continue
        seen.add(key)
        nodes.append(node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    _constant_dtypes(m)
    _onehot_int64(m)
    _rename_output(m, "logits")
    used = {i for n in m.graph.node for i in n.input}
    keep = [i for i in m.graph.initializer if i.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    onnx.save(m, path)


def _onehot_int64(m) -> None:
    """onnxruntime has no OneHot kernel with int32 on/off values (the MoE position one-hots): compute it with
    int64 values and Cast the result back to int32 (same integers)."""
    import onnx
    types = _types(m)
    nodes = []
    for node in m.graph.node:
        if node.op_type != "OneHot" or types.get(node.input[2]) != onnx.TensorProto.INT32:
            nodes.append(node)
            continue
        v, y = node.input[2], node.output[0]
        nodes.append(onnx.helper.make_node("Cast", [v], [v + "_int64"], to=onnx.TensorProto.INT64,
                                           name=f"{v}_int64Cast_{node.name}"))
        node.input[2] = v + "_int64"
        node.output[0] = y + "_int64"
        nodes += [node, onnx.helper.make_node("Cast", [y + "_int64"], [y], to=onnx.TensorProto.INT32,
                                              name=y + "_int32Cast")]
    del m.graph.node[:]
    m.graph.node.extend(nodes)


def _rename_output(m, name: str) -> None:
    """The graph output carries its producer's node name; call it what it is."""
    old = m.graph.output[0].name
    for node in m.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
        node.input[:] = [name if i == old else i for i in node.input]
    m.graph.output[0].name = name


def _types(m):
    """Element type of every value ONNX shape inference can type (0 where it cannot)."""
    import onnx
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info)
             + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({i.name: i.data_type for i in m.graph.initializer})
    return types


_SAME_TYPE_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal",
                  "Max", "Min", "Where", "Mod"}
_INT_WIDTH = {3: 8, 2: 8, 5: 16, 4: 16, 6: 32, 12: 32, 7: 64, 13: 64}     # ONNX int dtypes -> bits


def _constant_dtypes(m) -> None:
    """MindSpore gives a Python scalar the dtype of the tensor it meets (`int32_tensor < 8` compares in int32),
    but its exporter writes folded constants as int64 (and casts a Muls scalar to int64), which ONNX refuses next
    to an int32 tensor: such a constant takes its computed partner's dtype (where every value survives the cast).
    Two computed operands of int32 and int64 (MindSpore's integer sums are int64, ONNX ReduceSum keeps int32)
    meet as MindSpore promotes them: the int32 one is cast to int64."""
    import onnx
    from onnx import numpy_helper
    for _ in range(32):                       # types downstream of a repaired node become known on the next pass
        types = _types(m)
        init = {i.name: i for i in m.graph.initializer}
        producer = {o: n for n in m.graph.node for o in n.output}
        uses = Counter(i for n in m.graph.node for i in n.input)

        def constant(name):                   # an initializer, a Constant node, or a Cast of one of them
            n = producer.get(name)
            return name in init or (n is not None and (n.op_type == "Constant" or (
                n.op_type == "Cast" and constant(n.input[0]))))

        changed = False
        casts = []
        for node in m.graph.node:
            if node.op_type not in _SAME_TYPE_OPS:
                continue
            first = 1 if node.op_type == "Where" else 0
            ins = list(node.input)[first:]
            known = [types.get(i, 0) for i in ins]
            computed = {t for i, t in zip(ins, known) if t and not constant(i)}
            if computed <= _INT_WIDTH.keys() and len(computed) == 2:
                want = max(computed, key=_INT_WIDTH.get)     # int32 with int64: MindSpore promotes to int64
            elif len(computed) == 1:
                want = computed.pop()
            else:
                continue
            for k, (i, t) in enumerate(zip(ins, known)):
                if t == want or not t:
                    continue
                if not constant(i):
                    cast = onnx.helper.make_node("Cast", [i], [f"{i}_to{want}_{node.name}"], to=want,
                                                 name=f"{i}_to{want}_{node.name}Cast")
                    casts.append((node, cast))
                    node.input[first + k] = cast.output[0]
                    changed = True
                    continue
                n = producer.get(i)
                if n is not None and n.op_type == "Cast" and uses[i] == 1:      # a Cast of a constant, ours only
                    for a in n.attribute:
                        if a.name == "to":
                            a.i = want
                    changed = True
                elif n is not None:                 # a shared constant: cast a copy for this consumer
                    cast = onnx.helper.make_node("Cast", [i], [f"{i}_to{want}_{node.name}"], to=want,
                                                 name=f"{i}_to{want}_{node.name}Cast")
                    casts.append((node, cast))
                    node.input[first + k] = cast.output[0]
                    changed = True
                elif i in init:
                    old = numpy_helper.to_array(init[i])
                    value = old.astype(onnx.helper.tensor_dtype_to_np_dtype(want))
                    if not np.array_equal(value.astype(old.dtype), old):
                        continue
                    name = f"{i}_as{want}"
                    if name not in init:
                        init[name] = numpy_helper.from_array(value, name)
                        m.graph.initializer.append(init[name])
                    node.input[first + k] = name
                    changed = True
        for node, cast in casts:              # each Cast right before its consumer (topological order kept)
            nodes = list(m.graph.node)
            at = next(j for j, x in enumerate(nodes) if x is node or x == node)
            m.graph.node.insert(at, cast)
        if not changed:
            return


def _check_onnx(path: str) -> None:
    import onnx
    try:
        onnx.checker.check_model(path, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        _rm(path)
        raise ExportError(f"the exported ONNX graph fails onnx.checker: {str(e).strip().splitlines()[0]}") from None


def _rm(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def run_mindir(path: str, ids: np.ndarray) -> np.ndarray:
    """Load an exported MINDIR and run it (the round-trip check); ids of any integer type."""
    import mindspore as ms
    from mindspore import nn
    net = nn.GraphCell(ms.load(path))
    return net(ms.Tensor(np.asarray(ids).astype(np.int64))).asnumpy()
