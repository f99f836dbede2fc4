"""--apply: mechanical rewrites on a copy + unified diff; the source tree and everything else untouched."""
import filecmp
import os

import pytest

from ascend_v4.tools.migrate import apply_rewrites, load_rules, rewrite_text, scan_path
from ascend_v4.tools.migrate.apply import ApplyError, default_apply_dir

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

SMALL = '''\
import os
import torch
import torch.distributed as dist
from torch.cuda.amp import autocast

import triton


@triton.jit
def k(x):
    return "cuda"


def main(rank):
    dist.init_process_group(backend="nccl")
    torch.cuda.set_device(rank)
    x = torch.ones(2).cuda()
    y = x.to(f"cuda:{rank}")
    with autocast():
        z = torch.matmul(x, y)
    if z.is_cuda:
        torch.cuda.synchronize()
    return torch.float8_e4m3fn
'''

# Written by hand: exactly the mechanical changes, nothing in the kernel, nothing else.
SMALL_DIFF = '''\
--- a/small.py
+++ b/small.py
@@ -1,7 +1,8 @@
 import os
 import torch
+import torch_npu  # noqa: F401  (registers the 'npu' device and the 'hccl' backend)
 import torch.distributed as dist
-from torch.cuda.amp import autocast
+from torch.npu.amp import autocast
 
 import triton
 
@@ -12,12 +13,12 @@
 
 
 def main(rank):
-    dist.init_process_group(backend="nccl")
-    torch.cuda.set_device(rank)
-    x = torch.ones(2).cuda()
-    y = x.to(f"cuda:{rank}")
+    dist.init_process_group(backend="hccl")
+    torch.npu.set_device(rank)
+    x = torch.ones(2).npu()
+    y = x.to(f"npu:{rank}")
     with autocast():
         z = torch.matmul(x, y)
-    if z.is_cuda:
-        torch.cuda.synchronize()
+    if z.is_npu:
+        torch.npu.synchronize()
     return torch.float8_e4m3fn
'''


def _apply(src, out, **kw):
    result = scan_path(src, load_rules(), keep_sources=True)
    return result, apply_rewrites(result, src, out, **kw)


def test_small_file_diff_matches_hand_written(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "small.py").write_text(SMALL)
    (proj / "README.md").write_text("cuda\n")
    result, (diff, changed) = _apply(str(proj), str(tmp_path / "out"))
    assert diff == SMALL_DIFF
    assert changed == ["small.py"]
    assert (proj / "small.py").read_text() == SMALL  # source untouched
    assert (tmp_path / "out" / "README.md").read_text() == "cuda\n"  # copied verbatim
    # the kernel's "cuda" literal is inside a kernel body: reported with the kernel, never rewritten
    assert '"cuda"' in (tmp_path / "out" / "small.py").read_text()


def test_fixture_copy_only_rewritten_files_differ(tmp_path):
    src = os.path.join(FIXTURES, "moe_triton")
    out = tmp_path / "moe_npu"
    result, (diff, changed) = _apply(src, str(out))
    assert sorted(changed) == ["moe/kernels.py", "moe/model.py", "train.py"]
    for dirpath, _d, files in os.walk(src):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), src).replace(os.sep, "/")
            same = filecmp.cmp(os.path.join(src, rel), str(out / rel), shallow=False)
            assert same == (rel not in changed), rel
    # every removed line in the diff belongs to an autofix finding (or is the anchor of an insertion)
    auto_lines = {(f.file, f.snippet) for f in result.findings if f.autofix}
    minus = [line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    assert minus and all(any(m == s for _f, s in auto_lines) for m in minus)
    # kernels, router hazard, compile/graph findings are not mechanical: still present after --apply
    again = scan_path(str(out), load_rules())
    assert not [f for f in again.findings if f.autofix]
    left = {f.rule_id for f in again.findings}
    assert {"triton-kernel", "router-bf16-gate", "torch-cuda-graphs", "torch-compile-cudagraphs"} <= left
    assert "import torch_npu" in (out / "train.py").read_text()


def test_rewritten_python_still_parses(tmp_path):
    import ast

    out = tmp_path / "ds_npu"
    _apply(os.path.join(FIXTURES, "deepseek_fp8"), str(out))
    for dirpath, _d, files in os.walk(out):
        for name in files:
            if name.endswith(".py"):
                ast.parse((open(os.path.join(dirpath, name), encoding="utf-8").read()))


def test_refuses_non_empty_apply_dir_unless_forced(tmp_path):
    src = os.path.join(FIXTURES, "moe_triton")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ApplyError, match="not empty"):
        _apply(src, str(out))
    _apply(src, str(out), force=True)
    assert not (out / "keep.txt").exists()


def test_refuses_apply_dir_inside_source(tmp_path):
    proj = tmp_path / "p"
    proj.mkdir()
    (proj / "a.py").write_text("x = 'cuda'\n")
    with pytest.raises(ApplyError, match="outside"):
        _apply(str(proj), str(proj / "out"))


def test_symlinked_file_in_copy_is_not_written_through(tmp_path):
    proj = tmp_path / "p"
    proj.mkdir()
    (proj / "real.py").write_text("device = 'cuda'\n")
    os.symlink("real.py", proj / "link.py")
    _apply(str(proj), str(tmp_path / "out"))
    assert (proj / "real.py").read_text() == "device = 'cuda'\n"
    assert (tmp_path / "out" / "link.py").read_text() == "device = 'npu'\n"


def test_single_file_and_default_dir(tmp_path):
    f = tmp_path / "script.py"
    f.write_text("import torch\nx = torch.zeros(1, device='cuda')\n")
    out = default_apply_dir(str(f))
    assert out == str(tmp_path / "script_npu")
    _r, (diff, changed) = _apply(str(f), out)
    assert changed == ["script.py"]
    assert "+x = torch.zeros(1, device='npu')" in diff
    assert open(os.path.join(out, "script.py")).read().count("import torch_npu") == 1


def test_existing_torch_npu_import_not_duplicated_and_crlf_kept(tmp_path):
    f = tmp_path / "w.py"
    f.write_bytes(b"import torch\r\nimport torch_npu\r\ndevice = 'cuda:0'\r\n")
    out = tmp_path / "o"
    _apply(str(f), str(out))
    assert (out / "w.py").read_bytes() == b"import torch\r\nimport torch_npu\r\ndevice = 'npu:0'\r\n"


def test_rewrite_text_overlapping_edits_keep_first():
    from ascend_v4.tools.migrate import Edit

    new, n = rewrite_text("abcdef\n", [Edit(1, 1, 3, "X"), Edit(1, 2, 4, "Y"), Edit(1, 4, 5, "Z")])
    assert n == 2 and new in ("aXdZf\n", "abYZf\n")


def _apply_text(tmp_path, src):
    proj = tmp_path / "p"
    proj.mkdir()
    (proj / "m.py").write_text(src)
    result, _ = _apply(str(proj), str(tmp_path / "o"))
    return (tmp_path / "o" / "m.py").read_text(), result


def test_and_chain_fully_migrated_or_left_whole(tmp_path):
    # the case: both calls exist in torch_npu -> both rewritten
    out, result = _apply_text(tmp_path, "import torch\n"
                              "ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()\n"
                              "bad = (torch.cuda.is_available()\n"
                              "       and torch.cuda.get_arch_list())\n")
    assert "ok = torch.npu.is_available() and torch.npu.is_bf16_supported()\n" in out
    # get_arch_list is not in torch_npu: the whole multi-line statement is left as CUDA, and listed
    assert "bad = (torch.cuda.is_available()\n       and torch.cuda.get_arch_list())\n" in out
    assert [(x.start, x.end, x.blocking) for x in result.left] == [(3, 4, "torch.cuda.get_arch_list")]
    assert result.left[0].dropped == "torch.cuda.is_available"


def test_gradscaler_and_fstring_and_non_device_strings(tmp_path):
    src = ("import torch\n"
           "scaler = torch.cuda.amp.GradScaler()\n"
           "device = f'cuda:{torch.cuda.current_device()}'\n"
           "setattr(torch.version, 'cuda', '12.1')\n"
           "TRANSPORTS = {'cuda': 'ipc', 'cpu': 'shm'}\n"
           "mode = pick('cuda')\n"
           "x = torch.ones(1).cuda(); y = mode == 'cuda'\n")
    out, result = _apply_text(tmp_path, src)
    assert "scaler = torch.npu.amp.GradScaler()\n" in out
    assert "device = f'npu:{torch.npu.current_device()}'\n" in out  # both parts, not one
    assert "setattr(torch.version, 'cuda', '12.1')\n" in out
    assert "TRANSPORTS = {'cuda': 'ipc', 'cpu': 'shm'}\n" in out
    assert "mode = pick('cuda')\n" in out
    # a line never mixes: `.cuda()` is withheld because 'cuda' beside it is not certainly a device
    assert "x = torch.ones(1).cuda(); y = mode == 'cuda'\n" in out
    assert [(x.start, x.blocking, x.dropped) for x in result.left] == [(7, "cuda", ".cuda()")]


def test_statement_checking_cuda_build_is_left_whole(tmp_path):
    out, result = _apply_text(tmp_path, "import torch\nuse = torch.cuda.is_available() and torch.version.cuda\n")
    assert "use = torch.cuda.is_available() and torch.version.cuda\n" in out
    assert [x.blocking for x in result.left] == ["torch.version.cuda"]
