"""CLI: formats, --out, msFmkTransplt-style set, --apply, --fail-on, --min-severity, --rules, exit codes."""
import csv
import io
import json
import os

from click.testing import CliRunner

from ascend_v4.tools.migrate.cli import migrate

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
MOE = os.path.join(FIXTURES, "moe_triton")
PLAIN = os.path.join(FIXTURES, "plain_cpu")


def run(*args):
    return CliRunner().invoke(migrate, list(args), catch_exceptions=False)


def test_group_is_click_group_named_migrate():
    import click

    assert isinstance(migrate, click.Group) and migrate.name == "migrate"
    assert {"scan", "rules"} <= set(migrate.commands)


def test_table_default():
    res = run("scan", MOE)
    assert res.exit_code == 0
    out = res.stdout
    assert "findings (" in out and "blocker" in out
    assert "moe/kernels.py:10" in out and "fused_moe_kernel" in out
    assert "why: " in out and "use: " in out
    # worst first: the first finding row is a blocker
    rows = [l for l in out.splitlines() if l.startswith(("blocker", "change", "fine"))]
    assert rows[0].startswith("blocker") and rows[-1].startswith("fine")


def test_json_format_roundtrip():
    res = run("scan", MOE, "--format", "json")
    doc = json.loads(res.stdout)
    assert doc["summary"]["findings"] == len(doc["findings"]) > 0
    assert doc["summary"]["by_severity"]["blocker"] == 2
    f0 = doc["findings"][0]
    assert set(f0) >= {"file", "line", "col", "severity", "rule", "symbol", "message", "replacement", "effort", "autofix"}
    assert doc["warnings"] == []


def test_csv_format():
    res = run("scan", MOE, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert rows and rows[0].keys() >= {"file", "line", "severity", "rule", "ours", "aclnn", "torch_npu", "mindspore"}
    kernel = [r for r in rows if r["symbol"] == "fused_moe_kernel"][0]
    assert kernel["severity"] == "blocker" and kernel["ours"] == "grouped_matmul"


def test_md_format_to_file(tmp_path):
    out = tmp_path / "r" / "report.md"
    res = run("scan", MOE, "--format", "md", "--out", str(out))
    assert res.exit_code == 0 and res.stdout == ""
    text = out.read_text()
    assert text.startswith("# CUDA -> Ascend migration report")
    assert "## blocker (2)" in text and "| `triton-kernel` |" in text
    assert "findings" in res.stderr  # one summary line on stderr


def test_msft_set(tmp_path):
    d = tmp_path / "msft"
    res = run("scan", os.path.join(FIXTURES, "deepseek_fp8"), "--msft-dir", str(d), "--format", "json",
              "--out", str(tmp_path / "r.json"))
    assert res.exit_code == 0
    # msFmkTransplt's file names, its log name, plus our triage view
    assert sorted(os.listdir(d)) == sorted(["cuda_op_list.csv", "unsupported_api.csv", "unknown_api.csv",
                                            "change_list.csv", "api_precision_advice.csv",
                                            "api_performance_advice.csv", "triage.csv", "msFmkTranspltlog.txt"])
    # msFmkTransplt's columns first, in its order and spelling; ours after
    header = lambda name: next(csv.reader(open(d / name)))
    for name in ("unsupported_api.csv", "unknown_api.csv", "api_precision_advice.csv", "api_performance_advice.csv"):
        assert header(name)[:5] == ["File", "Start Line", "End Line", "OP", "Tips"], name
    assert header("change_list.csv")[:5] == ["File", "Start Line", "End Line", "Operation Type", "Message"]
    assert header("cuda_op_list.csv")[:2] == ["File", "Api"]
    ops = list(csv.DictReader(open(d / "cuda_op_list.csv")))
    assert "act_quant_kernel" in {r["Api"] for r in ops}
    assert any(r["Api"] == "deep_ep.Buffer" for r in ops)
    unsupported = list(csv.DictReader(open(d / "unsupported_api.csv")))
    assert unsupported and all(r["Category"] and r["Tips"] for r in unsupported)
    changes = list(csv.DictReader(open(d / "change_list.csv")))
    auto = {r["Original"]: r["Changed to"] for r in changes if r["Operation Type"] == "replace (--apply)"}
    assert auto['dist.init_process_group("nccl")  # expect: nccl-backend-string'] == \
        'dist.init_process_group("hccl")  # expect: nccl-backend-string'
    manual = [r for r in changes if r["Operation Type"] == "manual"]
    assert manual and all(r["Message"] for r in manual)
    precision = list(csv.DictReader(open(d / "api_precision_advice.csv")))
    assert any(r["OP"] == "linear(x, self.weight)" for r in precision)
    assert "findings" in (d / "msFmkTranspltlog.txt").read_text()


def test_msft_change_list_shows_rewritten_line_with_apply(tmp_path):
    d = tmp_path / "msft"
    res = run("scan", MOE, "--apply", "--apply-dir", str(tmp_path / "copy"), "--msft-dir", str(d),
              "--out", str(tmp_path / "r.txt"))
    assert res.exit_code == 0, res.stderr
    changes = list(csv.DictReader(open(d / "change_list.csv")))
    row = [r for r in changes if r["Original"].startswith("model = model.cuda()")][0]
    assert row["Operation Type"] == "replace (--apply)" and row["Changed to"].startswith("model = model.npu()")


def test_apply_writes_copy_and_diff(tmp_path):
    copy = tmp_path / "moe_npu"
    res = run("scan", MOE, "--apply", "--apply-dir", str(copy), "--format", "json")
    assert res.exit_code == 0
    diff = (tmp_path / "moe_npu.diff").read_text()
    assert diff.startswith("--- a/") and "+    model = model.npu()" in diff
    assert "rewrote 3 file(s)" in res.stderr
    # non-empty target without --force: one-line error, exit 1
    res2 = CliRunner().invoke(migrate, ["scan", MOE, "--apply", "--apply-dir", str(copy)])
    assert res2.exit_code == 2 and res2.stderr.count("\n") == 1 and "not empty" in res2.stderr


def test_fail_on_and_min_severity():
    assert run("scan", MOE, "--fail-on", "blocker").exit_code == 3
    assert run("scan", PLAIN, "--fail-on", "change").exit_code == 0
    res = run("scan", MOE, "--min-severity", "blocker", "--format", "json")
    doc = json.loads(res.stdout)
    assert {f["severity"] for f in doc["findings"]} == {"blocker"}


def test_plain_cpu_clean_output():
    res = run("scan", PLAIN)
    assert res.exit_code == 0
    assert "0 findings" in res.stdout and "no findings" in res.stdout


def test_extra_rules_file_overrides_and_adds(tmp_path):
    extra = tmp_path / "team.yaml"
    extra.write_text(
        "rules:\n"
        "  - id: triton-import\n    kind: import\n    module: triton\n    severity: change\n"
        "    category: dependency\n    effort: small\n    message: 'team policy: {symbol}'\n"
        "    replacement: {action: remove}\n"
        "  - id: numpy-float128\n    kind: name\n    name: numpy.float128\n    severity: change\n"
        "    category: dtype\n    effort: trivial\n    message: '{symbol} has no NPU dtype'\n"
        "    replacement: {action: use float64}\n")
    src = tmp_path / "p.py"
    src.write_text("import numpy as np\nimport triton\nx = np.float128\n")
    doc = json.loads(run("scan", str(src), "--rules", str(extra), "--format", "json").stdout)
    got = [(f["rule"], f["severity"], f["message"]) for f in doc["findings"]]
    assert got == [("triton-import", "change", "team policy: triton"),
                   ("numpy-float128", "change", "numpy.float128 has no NPU dtype")]


def test_rules_subcommand_lists_table():
    res = run("rules")
    assert res.exit_code == 0
    assert "triton-kernel" in res.stdout and "router-bf16-gate" in res.stdout


def test_unwritable_out_is_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = CliRunner().invoke(migrate, ["scan", MOE, "--out", str(blocker / "sub" / "r.txt")])
    assert res.exit_code == 2 and res.stderr.startswith("error: cannot write") and res.stderr.count("\n") == 1


def test_exclude(tmp_path):
    doc = json.loads(run("scan", MOE, "--exclude", "moe/*", "--format", "json").stdout)
    assert doc["findings"] and not any(f["file"].startswith("moe/") for f in doc["findings"])


def test_apply_lists_left_statements_and_triage(tmp_path):
    proj = tmp_path / "p"
    (proj / "tests").mkdir(parents=True)
    (proj / "train.py").write_text("import torch\nimport selective_scan_cuda\n"
                                   "ok = torch.cuda.is_available() and torch.cuda.get_arch_list()\n"
                                   "x = torch.zeros(1, device='cuda')\n")
    (proj / "tests" / "test_a.py").write_text("import selective_scan_cuda\nselective_scan_cuda.fwd(1)\n")
    copy = tmp_path / "p_npu"
    res = run("scan", str(proj), "--apply", "--apply-dir", str(copy), "--format", "json", "--out", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.stderr
    assert "left 1 statement(s)" in res.stderr
    left = list(csv.DictReader(open(str(copy) + ".left.csv")))
    assert [(r["File"], r["Start Line"], r["Blocking (no certain NPU equivalent)"]) for r in left] == \
        [("train.py", "3", "torch.cuda.get_arch_list")]
    doc = json.load(open(tmp_path / "r.json"))
    assert doc["left"][0]["withheld"] == "torch.cuda.is_available"
    assert (copy / "train.py").read_text().splitlines()[3:5] == [
        "ok = torch.cuda.is_available() and torch.cuda.get_arch_list()", "x = torch.zeros(1, device='npu')"]
    res = run("scan", str(proj), "--format", "triage")
    row = next(l for l in res.stdout.splitlines() if "selective_scan_cuda" in l)
    # one row for the library: 1 site in code, 2 in tests
    assert row.split()[4:7] == ["1", "2", "0"], row


def test_reports_are_written_atomically(tmp_path, monkeypatch):
    from ascend_v4.tools.migrate import report

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report.os, "replace", full_disk)
    res = run("scan", MOE, "--out", str(tmp_path / "r.txt"))
    assert res.exit_code == 2 and "error: cannot write" in res.stderr
    assert os.listdir(tmp_path) == []  # neither a truncated report nor a temporary file
