"""A full disk is reported, not hidden: one `error:` line naming the disk, exit 2, nothing under a final name,
no 'Exception ignored' from a half-closed archive. Each write path is tested with ENOSPC injected at its write
call (runs everywhere) and, where the machine lets us mount a tmpfs, on a real small filesystem."""
import errno
import gc
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_contract, cli, final_names

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


class _Limited:
    """A file object that accepts `budget` bytes, then fails every write with ENOSPC (like a filling disk)."""

    def __init__(self, fh, budget):
        self._fh, self.left = fh, budget

    def write(self, b):
        n = len(b.encode()) if isinstance(b, str) else memoryview(b).nbytes
        if n > self.left:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.left -= n
        return self._fh.write(b)

    def __getattr__(self, k):
        return getattr(self._fh, k)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


@pytest.fixture
def full_after(monkeypatch):
    """full_after(n): atomic output (ascend_v4.atomic) fails with ENOSPC after n bytes."""
    import ascend_v4.atomic as atomic
    real = atomic._fdopen

    def arm(n):
        monkeypatch.setattr(atomic, "_fdopen", lambda *a, **k: _Limited(real(*a, **k), n))
    return arm


@pytest.fixture
def unraisable(monkeypatch):
    """Exceptions Python could only print ('Exception ignored in …'), e.g. from ZipFile.__del__."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u))
    return seen


def _tokens(tmp_path, n=8):
    p = tmp_path / "t.npy"
    np.save(p, np.arange(n, dtype=np.int64)[None] % 97)
    return p


@pytest.mark.parametrize("budget", [0, 100, 20000])
def test_dump_out_on_a_full_disk(tmp_path, tiny_ckpt_dir, full_after, unraisable, budget):
    out = tmp_path / "d.npz"
    full_after(budget)
    r = cli("dump", tiny_ckpt_dir, "--tokens", _tokens(tmp_path), "--out", out, "--backend", "numpy")
    gc.collect()
    line = assert_contract(r, 2)
    assert "disk full" in line and str(out) in line
    assert not unraisable, [str(u.exc_value) for u in unraisable]
    assert final_names(tmp_path) == ["t.npy"]


def test_write_npz_failure_leaves_nothing_and_numpy_reads_success(tmp_path, full_after, unraisable):
    from ascend_v4.atomic import write_npz
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(5, np.int64)}
    write_npz(tmp_path / "ok.npz", arrays)
    with np.load(tmp_path / "ok.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["a", "b"]
        np.testing.assert_array_equal(z["a"], arrays["a"])
        np.testing.assert_array_equal(z["b"], arrays["b"])
    full_after(50)
    with pytest.raises(OSError) as e:
        write_npz(tmp_path / "full.npz", arrays)
    gc.collect()
    assert e.value.errno == errno.ENOSPC and not unraisable
    assert sorted(os.listdir(tmp_path)) == ["ok.npz"]


def _fake_model(n):
    class P:
        def __init__(self, name, a):
            self.name, self._a = name, a

        def asnumpy(self):
            return self._a

    class Cell:
        def __init__(self, ps):
            self._ps = ps

        def get_parameters(self):
            return self._ps
    w = [P(f"w{i}", np.full((64, 64), i, np.float32)) for i in range(n)]
    return Cell(w), Cell(w + [P("m0", np.zeros(64, np.float32))])


@pytest.mark.parametrize("budget", [0, 4096, 40000])
def test_train_checkpoint_on_a_full_disk(tmp_path, full_after, budget):
    from ascend_v4.train import state
    model, opt = _fake_model(4)
    state.save(str(tmp_path), 1, model, opt, {"seed": 0})
    assert (tmp_path / "latest").read_text().strip() == "ckpt-00000001"
    full_after(budget)
    with pytest.raises(OSError) as e:
        state.save(str(tmp_path), 2, model, opt, {"seed": 0})
    assert e.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00000001", "latest"]        # no ckpt-00000002(.tmp)
    assert (tmp_path / "latest").read_text().strip() == "ckpt-00000001"


def test_migrate_report_on_a_full_disk(tmp_path, monkeypatch):
    src = tmp_path / "proj"
    src.mkdir()
    (src / "a.py").write_text("import torch\nx = torch.zeros(3).cuda()\n")
    # reports are written through tools/migrate/report.write_atomic (mkstemp + os.fdopen + rename)
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _Limited(real_fdopen(fd, *a, **k), 10))
    out = tmp_path / "report.md"
    r = cli("migrate", "scan", src, "--format", "md", "--out", out)
    assert_contract(r, 2, "No space left on device")
    assert not out.exists() and final_names(tmp_path) == ["proj/a.py"]


def test_convert_direct_write_path_on_a_full_disk(tmp_path, tiny_ckpt_dir, monkeypatch):
    """The O_DIRECT sink (the default on local filesystems) used to turn ENOSPC into a BufferError."""
    from ascend_v4.convert import writer
    real_write, real_open, flags = os.write, os.open, []
    left = [300_000]

    def write(fd, data):
        n = memoryview(data).nbytes
        if n > left[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        left[0] -= n
        return real_write(fd, data)

    def opener(path, fl, *a, **k):
        flags.append(fl)
        return real_open(path, fl, *a, **k)
    monkeypatch.setattr(writer.os, "write", write)
    monkeypatch.setattr(writer.os, "open", opener)
    out = tmp_path / "out"
    r = cli("convert", tiny_ckpt_dir, out, "--workers", "1", "--no-progress")
    monkeypatch.undo()
    line = assert_contract(r, 2, "No space left on device")
    assert "free space and rerun the same command" in line
    if writer._DIRECT_FLAG and not any(f & writer._DIRECT_FLAG for f in flags):
        pytest.fail("the sink never tried O_DIRECT; the direct path was not exercised")
    assert not any(n.endswith(".safetensors") and "/" not in n for n in final_names(out))
    assert not (out / "manifest.json").exists() and not (out / "config.json").exists()
    r = cli("verify", out, "--workers", "1")
    assert r.exit_code == 1 and "unfinished conversion: rerun the same convert command" in r.output
    r = cli("convert", tiny_ckpt_dir, out, "--workers", "1", "--no-progress")          # the same command resumes
    assert r.exit_code == 0, r.output
    assert cli("verify", out, "--workers", "1").exit_code == 0


# ------------------------------------------------------------------ a real small filesystem (tmpfs) ----------
def _run(*args):
    p = subprocess.run([sys.executable, "-m", "ascend_v4.cli", *map(str, args)], capture_output=True, text=True,
                       env=dict(os.environ, GLOG_v="3"), timeout=300)
    return p.returncode, p.stdout, p.stderr


def test_real_small_filesystem(small_fs, tmp_path, tiny_ckpt_dir):
    fs = small_fs(64)
    rc, _, err = _run("dump", tiny_ckpt_dir, "--tokens", _tokens(tmp_path, 16), "--out", fs / "d.npz",
                      "--backend", "numpy")
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: disk full"), err
    assert os.listdir(fs) == []
    src = tmp_path / "proj"
    src.mkdir()
    (src / "a.py").write_text("import torch\n" + "x = torch.zeros(3).cuda()\n" * 400)
    rc, _, err = _run("migrate", "scan", src, "--format", "md", "--out", fs / "r.md")
    assert rc == 2 and err.startswith("error: ") and "No space left" in err, err
    assert os.listdir(fs) == []
    from ascend_v4.train import state
    model, opt = _fake_model(8)                               # 8 x 16 KiB of weights twice: > 64 KiB
    with pytest.raises(OSError) as e:
        state.save(str(fs), 1, model, opt, {"seed": 0})
    assert e.value.errno == errno.ENOSPC and os.listdir(fs) == []
