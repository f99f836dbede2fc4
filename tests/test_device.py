"""The device switch and the whole Ascend path on CPU.

* every computing command takes `--device cpu|ascend` (and ASCEND_V4_DEVICE); asked for ascend on a host without an
  NPU / CANN it stops with one `error:` line naming what is missing, exit 2 — never a CPU fall-back;
* with ASCEND_V4_EMULATE_ASCEND=1 the Ascend resolution runs on CPU: every op resolves its Ascend backend (our
  AscendC kernels, CANN vendor operators) and every such call runs through its contract stand-in. The whole model —
  forward, a decode step, a train step's loss and gradients (through the bindings' own backward) — then matches the
  CPU backend.
"""
import dataclasses
import glob
import os

import numpy as np
import pytest
from click.testing import CliRunner

COMMANDS = (["dump"], ["export"], ["demo"], ["ops", "list"], ["ops", "parity"], ["train"], ["generate"])
NO_NPU = not (os.path.exists("/dev/davinci_manager") or glob.glob("/dev/davinci[0-9]*"))


def _cli(args, env=None):
    from ascend_v4.cli import main
    return CliRunner().invoke(main, args, env=env or {}, catch_exceptions=False)


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_computing_command_takes_device(cmd):
    r = _cli(cmd + ["--help"])
    assert r.exit_code == 0 and "--device [cpu|ascend]" in r.stdout and "ASCEND_V4_DEVICE" in r.stdout


@pytest.mark.skipif(not NO_NPU, reason="this host has an Ascend NPU")
@pytest.mark.parametrize("args,env", [(["ops", "list", "--device", "ascend"], None),
                                      (["demo", "--new-tokens", "0"], {"ASCEND_V4_DEVICE": "ascend"}),
                                      (["ops", "parity", "--op", "hc_pre", "--device", "ascend"], None)])
def test_ascend_without_an_npu_is_one_error_line_not_a_fallback(args, env, tmp_path, monkeypatch):
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    monkeypatch.delenv("ASCEND_OPP_PATH", raising=False)
    monkeypatch.delenv("ASCEND_V4_EMULATE_ASCEND", raising=False)
    monkeypatch.chdir(tmp_path)
    r = _cli(args, env)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --device ascend: ") and "davinci" in lines[0] \
        and "CANN" in lines[0] and "--device cpu" in lines[0], lines
    assert r.stdout == "" and os.listdir(tmp_path) == []          # nothing ran, nothing written


def test_unknown_device_in_the_environment_is_rejected():
    r = _cli(["ops", "list"], {"ASCEND_V4_DEVICE": "gpu"})
    assert r.exit_code == 2 and "gpu" in r.output


def test_msrun_launcher_passes_the_device_to_every_worker():
    src = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "ascend_v4", "train", "msrun_launcher.sh")).read()
    assert 'DEVICE=${ASCEND_V4_DEVICE:-ascend}' in src and 'train --device "$DEVICE"' in src


@pytest.fixture
def ascend_emulated(monkeypatch):
    """The Ascend resolution on CPU for one test; the CPU target again afterwards."""
    from ascend_v4.runtime import setup
    monkeypatch.setenv("ASCEND_V4_EMULATE_ASCEND", "1")
    yield setup
    monkeypatch.delenv("ASCEND_V4_EMULATE_ASCEND")
    setup("cpu", "graph")


def test_setup_sets_the_target_the_registry_resolves_for(ascend_emulated):
    import mindspore as ms
    from ascend_v4 import precision
    from ascend_v4.ops import registry
    assert ascend_emulated("ascend", "graph") == "CPU"            # emulated: MindSpore stays on the CPU
    t = registry.target()
    assert (t.device, t.emulated, t.training) == ("Ascend", True, False)
    assert {op: registry.resolve(op).name for op in ("hc_pre", "sparse_attention", "moe_init_routing",
                                                     "moe_gating_topk")} == \
        {"hc_pre": "ascendc", "sparse_attention": "ascendc", "moe_init_routing": "aclnn", "moe_gating_topk": "ascendc"}
    assert precision.param_dtype() == ms.float32                 # bf16 only on a real device
    ascend_emulated("ascend", "graph", training=True)                 # every binding carries its backward
    assert {registry.resolve(op).name for op in ("hc_pre", "sparse_attention", "compress_kv", "moe_route")} == \
        {"ascendc"}
    assert registry.resolve("compress_kv_step").name == "composite"   # no Ascend kernel at all
    ascend_emulated("cpu", "graph")
    assert registry.target().device == "CPU" and registry.resolve("hc_pre").name in ("cpp", "composite")


def test_ops_parity_runs_the_ascend_backends_through_their_stand_ins(monkeypatch):
    monkeypatch.setenv("ASCEND_V4_EMULATE_ASCEND", "1")
    try:
        r = _cli(["ops", "parity", "--device", "ascend", "--op", "hc_post", "--backend", "ascendc", "--json"])
    finally:
        monkeypatch.delenv("ASCEND_V4_EMULATE_ASCEND")
        from ascend_v4.runtime import setup
        setup("cpu", "graph")
    import json
    rows = json.loads(r.stdout)
    assert r.exit_code == 0 and rows and all(x["backend"] == "ascendc" and x["ok"] for x in rows)
    assert {x["kind"] for x in rows} == {"fwd", "bwd"}


# ------------------------------------------------------------------------------------ the whole model, emulated
@pytest.fixture(scope="module")
def small():
    """Two layers + MTP covering every op: hash routing + CSA (ratio 4, indexer), learned routing + HCA (ratio 16),
    an SWA MTP block."""
    from ascend_v4 import load_config
    from ascend_v4.checkpoint import random_weights
    cfg = dataclasses.replace(load_config("tiny"), name="tiny2", n_layers=2, compress_ratios=(4, 16, 0))
    cfg.validate()
    return cfg, random_weights(cfg, seed=3)


def _forward(cfg, w, ids):
    from ascend_v4.graph.forward import build_forward
    from ascend_v4.ops import registry
    return build_forward(cfg, w, max_seq_len=48)(ids), registry.selected()


def _loss_and_grads(cfg, w, batch):
    import mindspore as ms
    from mindspore import nn
    from ascend_v4.model import Transformer
    from ascend_v4.train.losses import V4Loss
    from ascend_v4.weights import load_into

    model = Transformer(cfg, max_seq_len=batch[0].shape[1], with_mtp=True)
    load_into(model, w)
    loss = V4Loss(model)

    class Loss(nn.Cell):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def construct(self, ids, tgt, seg, mask, mtp_w):
            return self.net(ids, tgt, seg, mask, mtp_w)[0]

    params = loss.trainable_params()
    fn = ms.jit(ms.value_and_grad(Loss(loss), None, params))
    value, grads = fn(*[ms.Tensor(a) for a in batch])
    return float(value.asnumpy()), {p.name: g.asnumpy() for p, g in zip(params, grads)}


@pytest.mark.slow       # ~4 min on a loaded 2-core machine: graph compiles of the model twice, forward and grad
def test_model_forward_and_train_step_through_the_emulated_ascend_resolution_match_cpu(small, ascend_emulated):
    cfg, w = small
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, (2, 40))
    ascend_emulated("cpu", "graph")
    ref, _ = _forward(cfg, w, ids)
    ascend_emulated("ascend", "graph")
    got, ran = _forward(cfg, w, ids)
    assert {k: ran[k] for k in ("hc_pre", "hc_post", "hc_head", "sparse_attention", "hca_attention",
                                "lightning_indexer", "compress_kv", "moe_route")} == dict.fromkeys(
        ("hc_pre", "hc_post", "hc_head", "sparse_attention", "hca_attention", "lightning_indexer", "compress_kv",
         "moe_route"), "ascendc")
    assert {ran[k] for k in ("moe_init_routing", "moe_finalize_routing", "grouped_expert_ffn")} == {"aclnn"}
    for k in ref:
        scale = np.abs(ref[k]).max()
        assert np.abs(got[k] - ref[k]).max() <= 5e-6 * max(scale, 1.0), k      # measured 1.6e-6
    from ascend_v4.plan import plan                 # the plan names the backends that ran
    planned = {r["op"]: r["backend"] for r in plan(cfg, "910b", "")["phases"]["prefill"]["calls"]}
    assert {op: ran[op] for op in planned} == planned

    S = 24
    toks = rng.integers(0, cfg.vocab_size, (2, S + 1)).astype(np.int32)
    batch = (toks[:, :-1], toks[:, 1:], np.zeros((2, S), np.int32), np.ones((2, S), np.float32), np.float32(0.3))
    ascend_emulated("cpu", "graph", training=True)
    l_ref, g_ref = _loss_and_grads(cfg, w, batch)
    ascend_emulated("ascend", "graph", training=True)
    l_got, g_got = _loss_and_grads(cfg, w, batch)
    assert abs(l_got - l_ref) <= 1e-6 * abs(l_ref)
    assert sorted(g_got) == sorted(g_ref)
    for k in g_ref:          # measured: worst 3e-5 of the gradient's max (mHC scales, tiny gradients)
        scale = np.abs(g_ref[k]).max()
        assert np.abs(g_got[k] - g_ref[k]).max() <= 1e-4 * scale + 1e-7, (k, np.abs(g_got[k] - g_ref[k]).max(), scale)


@pytest.mark.slow
def test_decode_steps_through_the_emulated_ascend_resolution_match_cpu(small, ascend_emulated):
    from ascend_v4.serve import Engine, SamplingParams
    cfg, w = small
    prompt = np.random.default_rng(1).integers(0, cfg.vocab_size, 20)

    def run():
        eng = Engine(cfg, w, max_batch=1, max_len=48, prefill_chunk=16)
        g = eng.generate([prompt], max_new_tokens=4, sampling=SamplingParams(greedy=True), eos_id=None)
        return g.row(0), g.logits[0, :4]

    ascend_emulated("cpu", "graph")
    ids_ref, lg_ref = run()
    ascend_emulated("ascend", "graph")
    ids_got, lg_got = run()
    np.testing.assert_array_equal(ids_got, ids_ref)
    assert np.abs(lg_got - lg_ref).max() <= 2e-6 * np.abs(lg_ref).max()
