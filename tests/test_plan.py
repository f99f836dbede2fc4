"""`ascend-v4 plan`: every operator call of prefill, decode and a train step with its backend on 910B/910C, from
the config alone; the backends are the ones the runtime resolves for the same target."""
import dataclasses
import json
import os
import subprocess
import sys

from click.testing import CliRunner


def _tiny2():
    from ascend_v4 import load_config
    return dataclasses.replace(load_config("tiny"), name="tiny2", n_layers=2, compress_ratios=(4, 16, 0))


def _rows(p, phase):
    return {r["op"]: r for r in p["phases"][phase]["calls"]}


def test_call_counts_follow_the_layer_schedule():
    from ascend_v4.plan import plan
    p = plan(_tiny2(), "910b", "8.5")
    # hand count: block 0 = CSA (2 compressors, indexer, attention), block 1 = HCA, MTP block = SWA
    pre = {op: r["calls"] for op, r in _rows(p, "prefill").items()}
    assert pre == {"hc_pre": 6, "hc_post": 6, "compress_kv": 3, "lightning_indexer": 1, "sparse_attention": 2,
                   "hca_attention": 1, "moe_route": 3, "moe_init_routing": 3, "grouped_expert_ffn": 3,
                   "moe_finalize_routing": 3, "expert_ffn": 3, "hc_head": 1}
    dec = {op: r["calls"] for op, r in _rows(p, "decode").items()}
    assert dec["compress_kv_step"] == 3 and dec["sparse_attention"] == 3 and "lightning_indexer" not in dec
    tr = {op: r["calls"] for op, r in _rows(p, "train").items()}
    assert tr["newton_schulz"] == 1 and tr["hc_head"] == 2


def test_910b_plan_prefers_vendor_then_ascendc_and_says_why():
    from ascend_v4.plan import plan
    from ascend_v4 import load_config
    p = plan(load_config("v4-flash"), "910b", "8.5")
    pre = _rows(p, "prefill")
    assert {op: pre[op]["backend"] for op in ("moe_init_routing", "grouped_expert_ffn", "moe_finalize_routing")} == \
        dict.fromkeys(("moe_init_routing", "grouped_expert_ffn", "moe_finalize_routing"), "aclnn")
    assert all(pre[op]["backend"] == "ascendc" for op in ("hc_pre", "hc_post", "hc_head", "moe_route",
                                                          "lightning_indexer", "sparse_attention", "compress_kv"))
    assert "aclnnMoeInitRoutingV2" in pre["moe_init_routing"]["runs"] and "CANN >= 8.0" in pre["moe_init_routing"]["runs"]
    assert any("sinks only on 950" in v for v in pre["sparse_attention"]["vendor"])
    assert any("sqrt-softplus" in v for v in pre["moe_route"]["vendor"])
    tr = _rows(p, "train")
    assert {op: r["backend"] for op, r in tr.items() if op != "newton_schulz"} == \
        {op: r["backend"] for op, r in pre.items()}           # every Ascend binding carries its backward
    assert "no AscendC kernel or vendor operator" in tr["newton_schulz"]["why"]
    assert not p["phases"]["train"]["fits"]            # 284B on one 64 GB device: the plan says it does not fit


def test_old_cann_falls_back_to_our_kernels_with_the_reason():
    from ascend_v4.plan import plan
    from ascend_v4 import load_config
    r = _rows(plan(load_config("v4-flash"), "910c", "7.0"), "prefill")["moe_init_routing"]
    assert r["backend"] == "ascendc" and "needs CANN >= 8.0, the target has 7.0" in r["why"]


def test_plan_is_what_the_runtime_resolves(monkeypatch):
    """The same target through runtime.setup (emulated device) resolves every planned op to the planned backend."""
    from ascend_v4.ops import registry
    from ascend_v4.plan import plan
    from ascend_v4.runtime import setup
    p = plan(_tiny2(), "910b", "")
    monkeypatch.setenv("ASCEND_V4_EMULATE_ASCEND", "1")
    try:
        for phase, training in (("prefill", False), ("train", True)):
            setup("ascend", "graph", training=training)
            assert {op: registry.resolve(op).name for op in _rows(p, phase)} == \
                {op: r["backend"] for op, r in _rows(p, phase).items()}, phase
    finally:
        monkeypatch.delenv("ASCEND_V4_EMULATE_ASCEND")
        setup("cpu", "graph")


def test_cli_json_for_910c_without_building_the_model():
    code = ("import json, resource, sys; from click.testing import CliRunner; from ascend_v4.cli import main; "
            "rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "r = CliRunner().invoke(main, ['plan', '--soc', '910c', '--config', 'v4-flash', '--parallel', "
            "'dp=16,ep=16', '--json']); assert r.exit_code == 0, r.output; p = json.loads(r.stdout); "
            "print(json.dumps({'phases': sorted(p['phases']), 'model': 'ascend_v4.model' in sys.modules, "
            "'rss_gib': (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 2**20, "
            "'ep': p['parallel']['ep'], 'soc': p['soc']}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, GLOG_v="3"))
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["phases"] == ["decode", "prefill", "train"] and res["ep"] == 16 and res["soc"] == "910c"
    # config only: no Cells, no weights (V4-Flash's would be > 500 GB); the growth over the imports is measured, so
    # the imports' own peak (MindSpore, ~0.4 GB, more on a loaded machine) does not count
    assert not res["model"] and res["rss_gib"] < 1.0


def test_bad_parallel_is_one_error_line():
    from ascend_v4.cli import main
    r = CliRunner().invoke(main, ["plan", "--parallel", "dp8"])
    assert r.exit_code == 2 and r.stderr.startswith("error: --parallel")
