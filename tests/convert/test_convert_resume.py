"""Kill a real conversion with SIGKILL in the middle of writing a file, rerun the same command, and get
exactly the bytes of an uninterrupted run.

Deterministic: the launcher paused_convert.py (this directory) makes whichever worker writes a given planned
file stop after its first tensor group, with the file half written under its temporary name, and create a
marker; the test then kills the whole process group."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from cvt_helpers import ENV, all_files, cli, same_tree


def start(args, pause_index, marker):
    launcher = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paused_convert.py")
    return subprocess.Popen([sys.executable, launcher, str(pause_index), marker, *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def kill_when_paused(p, marker, timeout=120):
    t0 = time.time()
    while not os.path.exists(marker):
        assert p.poll() is None, p.communicate()
        assert time.time() - t0 < timeout, "the conversion never reached the pause point"
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)            # the converter and its workers, as a crash would
    p.wait()
    assert p.returncode == -signal.SIGKILL


@pytest.mark.parametrize("workers,pause,layout", [(2, 3, ["--dtype", "w8a8", "--tp", "2", "--ep", "2"]),
                                                  (1, 0, ["--dtype", "w8a8", "--tp", "2", "--ep", "2"]),
                                                  (2, 2, ["--dtype", "w4a8"])])       # serving layout
def test_killed_conversion_resumes_to_identical_output(release, tmp_path, workers, pause, layout):
    dst = str(tmp_path / "out")
    args = ["convert", release[0], dst, *layout, "--workers", str(workers), "--shard-size", "60KB", "--no-progress"]
    rc, _, err = cli(*args)                          # the uninterrupted reference, same command, same path
    assert rc == 0, err
    ref = str(tmp_path / "ref")
    os.rename(dst, ref)
    n_files = len([f for f in all_files(ref) if f.endswith(".safetensors")])
    assert n_files > 8

    marker = str(tmp_path / "paused")
    p = start(args, pause, marker)
    kill_when_paused(p, marker)
    left = all_files(dst)
    assert "manifest.json" not in left
    assert [f for f in left if f.endswith(".safetensors.tmp")], left       # a half-written file
    done_before = [f for f in left if f.endswith(".safetensors")]
    assert len(done_before) < n_files

    rc, _, err = cli(*args)                          # the same command again
    assert rc == 0, err
    assert "resuming" in err
    m = re.search(r"(\d+) already done", err)
    # a file renamed just before the kill but not yet journaled is redone, never trusted
    assert (int(m.group(1)) if m else 0) <= len(done_before)
    same_tree(ref, dst)                              # every byte, manifest included


def test_killed_to_official_resumes(converted, release, tmp_path):
    out = str(tmp_path / "hf")
    args = ["convert", converted("bf16"), out, "--to-official", "--workers", "1", "--no-progress"]
    marker = str(tmp_path / "paused")
    p = start(args, 1, marker)
    kill_when_paused(p, marker)
    assert any(f.endswith(".tmp") for f in all_files(out))
    rc, _, err = cli(*args)
    assert rc == 0, err
    same_tree(release[0], out)
