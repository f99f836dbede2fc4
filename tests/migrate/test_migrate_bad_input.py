"""Bad input never crashes: it becomes a warning (or a finding), and a bad path is a one-line error."""
import builtins
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ascend_v4.tools.migrate import ScanPathError, load_rules, scan_path
from ascend_v4.tools.migrate.cli import migrate


@pytest.fixture(scope="module")
def rules():
    return load_rules()


def test_nonexistent_path_api(tmp_path, rules):
    with pytest.raises(ScanPathError, match="does not exist"):
        scan_path(str(tmp_path / "nope"), rules)


def test_nonexistent_path_cli_one_line_error(tmp_path):
    res = CliRunner().invoke(migrate, ["scan", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: path does not exist:")


def test_nonexistent_path_subprocess_exit_code(tmp_path):
    """The same through a real process (what a shell script sees)."""
    code = "from ascend_v4.tools.migrate.cli import migrate; migrate(prog_name='ascend-v4 migrate')"
    p = subprocess.run([sys.executable, "-c", code, "scan", str(tmp_path / "missing")],
                       capture_output=True, text=True, env=os.environ.copy())
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.strip().count("\n") == 0 and "path does not exist" in p.stderr


def test_binary_file_is_a_warning(tmp_path, rules):
    (tmp_path / "blob.py").write_bytes(b"\x7fELF\x00\x01\x02 torch.cuda.synchronize()")
    (tmp_path / "ok.py").write_text("x = 'cuda'\n")
    r = scan_path(str(tmp_path), rules)
    assert [(w.file, w.kind) for w in r.warnings] == [("blob.py", "binary")]
    assert [f.file for f in r.findings] == ["ok.py"]


def test_undecodable_file_scanned_with_warning(tmp_path, rules):
    (tmp_path / "latin.py").write_bytes(b"# caf\xe9\nimport torch\ntorch.cuda.synchronize()\n")
    (tmp_path / "k.cu").write_bytes(b"// \xff\xfe\n__global__ void k(float* x) {}\n")
    r = scan_path(str(tmp_path), rules)
    kinds = sorted((w.file, w.kind) for w in r.warnings)
    # latin.py: one warning for the bytes, one because its torch.cuda rewrite is withheld
    assert kinds == [("k.cu", "decode"), ("latin.py", "decode"), ("latin.py", "decode")]
    assert {(f.file, f.rule_id) for f in r.findings} >= {
        ("latin.py", "torch-cuda-device-api"), ("k.cu", "cuda-global-kernel")}
    assert not any(f.autofix for f in r.findings)


def test_pep263_coding_cookie_respected(tmp_path, rules):
    (tmp_path / "l1.py").write_bytes(b"# -*- coding: latin-1 -*-\ns = '\xe9'\ndevice = 'cuda'\n")
    r = scan_path(str(tmp_path), rules)
    assert r.warnings == []
    assert [(f.line, f.rule_id) for f in r.findings] == [(3, "device-string-cuda")]


def test_syntax_error_warns_and_falls_back_to_text(tmp_path, rules):
    (tmp_path / "py2.py").write_text("import torch\nprint 'hello'\nmodel.cuda()\ndist.init_process_group('nccl')\n")
    r = scan_path(str(tmp_path), rules)
    assert len(r.warnings) == 1
    w = r.warnings[0]
    assert (w.file, w.line, w.kind) == ("py2.py", 2, "syntax")
    assert "fell back to text rules" in w.message
    assert [(f.line, f.rule_id) for f in r.findings] == [(3, "py-fallback-cuda"), (4, "py-fallback-cuda")]


def test_unreadable_file_is_a_warning(tmp_path, rules, monkeypatch):
    (tmp_path / "secret.py").write_text("x = 'cuda'\n")
    (tmp_path / "fine.py").write_text("y = 'cuda'\n")
    real_open = builtins.open

    def fake_open(path, *a, **kw):
        if str(path).endswith("secret.py"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(builtins, "open", fake_open)
    r = scan_path(str(tmp_path), rules)
    assert [(w.file, w.kind) for w in r.warnings] == [("secret.py", "unreadable")]
    assert "Permission denied" in r.warnings[0].message
    assert [f.file for f in r.findings] == ["fine.py"]


def test_dangling_symlink_and_fifo(tmp_path, rules):
    os.symlink(tmp_path / "gone.py", tmp_path / "dangling.py")
    os.mkfifo(tmp_path / "pipe.py")
    r = scan_path(str(tmp_path), rules)  # must not block on the FIFO
    assert sorted((w.file, w.kind) for w in r.warnings) == [("dangling.py", "unreadable"), ("pipe.py", "unreadable")]


def test_empty_dir_and_unknown_single_file(tmp_path, rules):
    r = scan_path(str(tmp_path), rules)
    assert (r.files_scanned, r.findings, r.warnings) == (0, [], [])
    (tmp_path / "notes.txt").write_text("cuda everywhere\n")
    r = scan_path(str(tmp_path / "notes.txt"), rules)
    assert r.findings == [] and [w.kind for w in r.warnings] == ["skipped"]


def test_deeply_nested_expression_does_not_crash(tmp_path, rules):
    (tmp_path / "deep.py").write_text("x = " + "(" * 300 + "'cuda'" + ")" * 300 + "\n")
    (tmp_path / "long.py").write_text("x = " + " + ".join(["'a'"] * 20000) + "\ny = 'cuda'\n")
    r = scan_path(str(tmp_path), rules)  # either findings or a warning per file, never an exception
    files = {f.file for f in r.findings} | {w.file for w in r.warnings}
    assert files == {"deep.py", "long.py"}


def test_bad_rules_file_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: x-y\n    kind: name\n    name: foo.*\n    severity: fatal\n")
    res = CliRunner().invoke(migrate, ["scan", str(tmp_path), "--rules", str(bad)])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == ["error: rule 'x-y': missing 'category'"]
