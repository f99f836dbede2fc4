"""ONNX export: the "onnx" formulation of the primitives MindSpore 2.10's exporter cannot convert computes the
same values as the native one; the exported tiny model passes onnx.checker and onnxruntime reproduces `dump`;
a graph with unconvertible ops (Custom kernels) is refused with every such op named, exit 2, no file left."""
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from test_cli import ENV


class _Prims:
    """rsqrt, ceil, cumsum (both axes, 1-D and 2-D) and segment_sum of ops/common.py in one graph."""

    def __new__(cls):
        from mindspore import nn
        from ascend_v4.ops import common

        class Prims(nn.Cell):
            def construct(self, v, x, c2, c1, rows, seg):
                return (common.rsqrt(v), common.ceil(x), common.cumsum(c2, -1), common.cumsum(c2, 0),
                        common.cumsum(c1, 0), common.segment_sum(rows, seg, 5))
        return Prims()


def test_onnx_formulation_matches_native_and_numpy(ms_graph):
    import mindspore as ms
    from ascend_v4.ops.common import formulation
    rng = np.random.default_rng(0)
    v = rng.uniform(1e-3, 50, (4, 7)).astype(np.float32)
    x = np.array([-2.5, -2.0, -1.5, -0.2, 0.0, 0.3, 1.0, 1.5, 2.5, 3.0001, 7.9], np.float32)
    c2 = rng.integers(0, 2, (6, 9)).astype(np.int32)
    c1 = rng.integers(0, 4, (8,)).astype(np.int32)
    rows = rng.standard_normal((7, 3)).astype(np.float32)
    seg = np.array([0, 4, 2, 4, 0, 1, 2], np.int32)                    # segment 3 stays empty
    want_seg = np.zeros((5, 3))
    for r, s in zip(rows.astype(np.float64), seg):
        want_seg[s] += r
    want = (1 / np.sqrt(v.astype(np.float64)), np.ceil(x), np.cumsum(c2, -1), np.cumsum(c2, 0), np.cumsum(c1),
            want_seg)
    from ascend_v4.graph.export import graph_primitives
    args = [ms.Tensor(a) for a in (v, x, c2, c1, rows, seg)]
    lacking = {"Rsqrt", "Ceil", "CumSum", "UnsortedSegmentSum", "Reciprocal"}      # no ONNX converter
    for name in ("native", "onnx", "native"):                # the switch takes effect at each compile
        with formulation(name):
            got = [o.asnumpy() for o in _Prims()(*args)]
            prims = set(graph_primitives(_Prims(), *args))
        assert (prims & lacking == set()) == (name == "onnx"), (name, prims & lacking)
        for g, w, dt in zip(got, want, (np.float32, np.float32, np.int32, np.int32, np.int32, np.float32)):
            assert g.dtype == dt and g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=2e-7, atol=1e-6, err_msg=name)
        assert np.array_equal(got[1], np.ceil(x)) and np.array_equal(got[2], np.cumsum(c2, -1))
    with pytest.raises(ValueError, match="formulation must be one of"):
        with formulation("tflite"):
            pass


def _cli(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "ascend_v4.cli", *args], capture_output=True, text=True, env=ENV,
                       cwd=cwd, timeout=900)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.slow
def test_onnx_export_runs_in_onnxruntime_like_dump(tiny_ckpt_dir, tiny_cfg, tmp_path):
    ids = np.random.default_rng(5).integers(0, tiny_cfg.vocab_size, (2, 24))
    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / "tiny.onnx"
    rc, so, err = _cli("export", tiny_ckpt_dir, "--format", "onnx", "--out", str(out), "--batch", "2", "--seq", "24",
                       cwd=tmp_path)
    assert rc == 0, err
    assert "exported ONNX [2x24]" in so and sorted(p.name for p in tmp_path.iterdir()) == ["ids.npy", "tiny.onnx"]
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input_ids"] and [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    kinds = {n.op_type for n in model.graph.node}
    assert not kinds & {"CumSum", "Reciprocal"} and "Sqrt" in kinds       # RMSNorm as x / sqrt(mean + eps)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input_ids": ids.astype(np.int64)})[0]

    for backend in ("graph", "numpy"):                                    # the graph-mode dump, the float64 golden
        rc, _, err = _cli("dump", tiny_ckpt_dir, "--tokens", str(tmp_path / "ids.npy"), "--out",
                          str(tmp_path / f"{backend}.npz"), "--backend", backend, cwd=tmp_path)
        assert rc == 0, err
        ref = np.load(tmp_path / f"{backend}.npz")["logits"]
        assert got.shape == ref.shape == (2, 24, tiny_cfg.vocab_size)
        assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), (backend, np.abs(got - ref).max())


@pytest.mark.slow
def test_onnx_export_of_custom_kernels_names_them_and_exits_2(tiny_ckpt_dir, tmp_path):
    from ascend_v4.ops.mhc.cpp import available
    assert available(), "the CPU C++ kernels are not built: run .venv/bin/python ops/build.py"
    rc, so, err = _cli("export", tiny_ckpt_dir, "--format", "onnx", "--backends", "auto", "--out",
                       str(tmp_path / "m.onnx"), "--seq", "16", cwd=tmp_path)
    assert rc == 2 and so == ""
    line, = err.strip().splitlines()
    assert line.startswith("error: ONNX export failed: MindSpore 2.10's ONNX exporter cannot convert Custom (")
    assert "HcPreFwd" in line and "--backends composite" in line
    assert list(tmp_path.iterdir()) == []
    rc, _, err = _cli("export", tiny_ckpt_dir, "--format", "onnx", "--out", str(tmp_path / "m.mindir"))
    assert rc == 2 and "must end in .onnx" in err
