"""MINDIR export round trip: the exported graph computes the same logits as the live model, from int64 ids,
with only standard primitives (composite backends) in it. ONNX: tests/test_export_onnx.py."""
import numpy as np
import pytest


@pytest.mark.slow   # > 20 s: runs in .ci/run, so the default suite stays under 10 minutes
def test_mindir_export_reruns_identically(ms_graph, tiny_cfg, tiny_weights, tmp_path):
    from ascend_v4.graph.export import ExportError, export, run_mindir
    from ascend_v4.graph.forward import build_forward
    from mindspore.train import mind_ir_pb2
    path = export(tiny_cfg, tiny_weights, 1, 24, str(tmp_path / "tiny.mindir"))
    m = mind_ir_pb2.ModelProto()
    m.ParseFromString(open(path, "rb").read())
    inputs = list(m.graph.input)
    assert len(inputs) == 1 and inputs[0].tensor[0].data_type == mind_ir_pb2.TensorProto.INT64
    kinds = {p.op_type.rsplit(":", 1)[0] for p in m.primitives}
    assert "Custom" not in kinds and b".so" not in open(path, "rb").read()      # portable: no local kernels
    ids = np.random.default_rng(2).integers(0, tiny_cfg.vocab_size, (1, 24))
    live = build_forward(tiny_cfg, tiny_weights, max_seq_len=24)(ids)["logits"]
    np.testing.assert_allclose(run_mindir(path, ids), live, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run_mindir(path, ids.astype(np.int32)), live, rtol=1e-5, atol=1e-5)
    with pytest.raises(ExportError, match="must end in .mindir"):
        export(tiny_cfg, tiny_weights, 1, 24, str(tmp_path / "x.bin"))
    with pytest.raises(ExportError, match="format must be MINDIR or ONNX"):
        export(tiny_cfg, tiny_weights, 1, 24, str(tmp_path / "x.tflite"), fmt="tflite")
