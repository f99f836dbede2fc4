"""Bounded memory on generated code: a 1.4 MB single line scans in < 2 s (CPU) and < 200 MB.

Before the fix each finding kept its whole source line twice (snippet + rewritten preview): a 140 KB line
with 20,000 literals took 10 GB. Now a finding holds at most a capped snippet, identical repeats on one
line are one finding with a count, and Python with a line over 64 KiB (generated code, whose AST alone
would exceed the budget) is read by the text rules.
"""
import json
import time
import tracemalloc

from ascend_v4.tools.migrate import apply_rewrites, load_rules, scan_path

LINE_BYTES = 1_400_000


def _one_line_python():
    """A generated table on one line (the issue's case: literals by the ten thousand), every block of
    twenty entries also holding CUDA usage: a device string, a `.cuda()`, a torch.cuda call, a bare 'cuda'."""
    plain = "".join(f'"t{i}", {i}, ' for i in range(16))
    unit = plain + '"cuda:0", w.cuda(), torch.cuda.synchronize(), "cuda", '
    n = LINE_BYTES // len(unit) + 1
    return "import torch\nDATA = [" + unit * n + "]\n", n


def _one_line_json():
    unit = '{"device": "cuda:0", "env": {"CUDA_VISIBLE_DEVICES": "0", "NCCL_DEBUG": "INFO"}}, '
    n = LINE_BYTES // len(unit) + 1
    return "[" + unit * n + "{}]\n", n


def test_huge_single_line_bounded(tmp_path):
    src, n = _one_line_python()
    proj = tmp_path / "gen"
    proj.mkdir()
    (proj / "generated.py").write_text(src)
    json_text, json_n = _one_line_json()
    (proj / "big.json").write_text(json_text)
    assert len(src) >= LINE_BYTES
    rules = load_rules()

    t0 = time.process_time()
    result = scan_path(str(proj), rules)
    cpu = time.process_time() - t0

    tracemalloc.start()
    result = scan_path(str(proj), rules, keep_sources=True)
    _cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert cpu < 2.0, f"{cpu:.2f} s CPU"
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MB"
    counts = {}
    for f in result.findings:
        assert len(f.snippet) <= 160 and len(f.fix_preview) <= 160 and len(f.symbol) <= 160
        counts[(f.file, f.rule_id, f.symbol)] = counts.get((f.file, f.rule_id, f.symbol), 0) + f.count
    assert len(result.findings) < 20
    # generated Python is read by the text rules: every site still counted, the file flagged, nothing rewritten
    assert [(w.file, w.kind) for w in result.warnings] == [("generated.py", "generated")]
    for sym in (".cuda(", "torch.cuda.synchronize", "cuda:0", "cuda"):
        assert counts[("generated.py", "py-fallback-cuda", sym)] == n, sym
    assert counts[("big.json", "shell-cuda-env", "CUDA_VISIBLE_DEVICES")] == json_n
    assert counts[("big.json", "shell-nccl-env", "NCCL_DEBUG")] == json_n
    assert not any(f.edits for f in result.findings)
    out = tmp_path / "out"
    apply_rewrites(result, str(proj), str(out))
    assert (out / "generated.py").read_text() == src  # copied verbatim
    json.loads((out / "big.json").read_text())


def test_repeats_on_one_line_are_one_finding_with_every_edit(tmp_path):
    n = 2000
    src = "import torch\nxs = [t.cuda() for t in (" + "a.cuda(), " * n + ")]\n"
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "m.py").write_text(src)
    result = scan_path(str(tmp_path / "p"), load_rules(), keep_sources=True)
    [f] = [f for f in result.findings if f.rule_id == "tensor-cuda-method"]
    assert f.count == n + 1 and len(f.edits) == n + 1
    apply_rewrites(result, str(tmp_path / "p"), str(tmp_path / "o"))
    out = (tmp_path / "o" / "m.py").read_text()
    assert out.count(".npu()") == n + 1 and ".cuda()" not in out
