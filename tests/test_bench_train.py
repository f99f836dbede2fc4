"""bench/train.py: argument handling (fast) and one real `--quick` run (slow: ~1 min, mostly our graph compile)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "train.py")


def _load_bench():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_flag_and_bad_arguments():
    b = _load_bench()
    a = b.parse(["--quick"])
    assert (a.configs, a.batch, a.seq, a.reps) == ("tiny", 2, 64, 1)
    with pytest.raises(SystemExit):
        b.parse(["--steps", "0"])


def test_summary_arithmetic():
    """Medians, tokens/s and ratios from made-up child results (no processes)."""
    b = _load_bench()
    a = b.parse(["--batch", "2", "--seq", "8", "--warmup", "1", "--steps", "3", "--reps", "2"])

    def run(times, rss, fwd=1.0):
        return {"times": times, "cpu_times": [t / 2 for t in times], "peak_rss_mb": rss, "rss_after_import_mb": 100,
                "rss_after_build_mb": 150, "losses": [{"loss": 5.0, "lm": 4.0}] * len(times),
                "phases": {"forward": fwd, "forward_backward": 3 * fwd, "optimizer": 2.0}}
    runs = {"ours": [run([9.0, 1.0, 0.2, 0.4, 0.3], 500, 10.0), run([8.0, 1.0, 0.5, 0.1, 0.6], 700, 20.0)],
            "hf": [run([0.5, 0.5, 0.8, 0.8, 0.8], 350), run([0.5, 0.5, 0.8, 0.8, 0.8], 340)]}
    r = b.summarize(a, "tiny", runs)
    assert r["ours"]["phase_ms"] == {"forward": 15.0, "forward_backward": 45.0, "optimizer": 2.0}
    assert r["hf"]["phase_ms"]["forward_backward"] == 3.0
    assert r["ours"]["step_s_median"] == pytest.approx(0.35)          # median of 0.2 0.4 0.3 0.5 0.1 0.6
    assert r["ours"]["compile_or_first_step_s"] == pytest.approx(8.5)
    assert r["ours"]["tokens_per_s"] == pytest.approx(16 / 0.35)
    assert r["tokens_per_s_ratio_ours_over_hf"] == pytest.approx(0.8 / 0.35)
    assert r["tokens_per_cpu_s_ratio_ours_over_hf"] == pytest.approx(0.8 / 0.35)
    assert r["peak_rss_ratio_ours_over_hf"] == pytest.approx(700 / 350)
    assert r["first_lm_loss_abs_diff"] == 0


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "train.json"
    env = dict(os.environ, GLOG_v="3", OMP_WAIT_POLICY="PASSIVE")
    res = subprocess.run([sys.executable, SCRIPT, "--quick", "--out", str(out)], capture_output=True, text=True,
                         env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads(out.read_text())
    (row,) = rep["rows"]
    for side in ("ours", "hf"):
        s = row[side]
        assert s["tokens_per_s"] > 0 and s["tokens_per_cpu_s"] > 0
        ph = s["phase_ms"]
        assert 0 < ph["forward"] < ph["forward_backward"] and ph["optimizer"] > 0
        assert s["peak_rss_mb"] >= s["rss_after_import_mb"] > 50
        assert len(s["losses_rep0"]) == 1 + 1 + 3
    # same weights, same tokens: the two implementations' first LM loss agrees (float32 forward parity)
    assert row["first_lm_loss_abs_diff"] < 5e-3, row["first_lm_loss_abs_diff"]
    assert row["ours"]["mtp"] is True and row["ours"]["losses_rep0"][0]["mtp"] > 0
    assert "ours/hf" in res.stdout and not os.path.exists(str(out) + ".tmp")
