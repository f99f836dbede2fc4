"""Test helpers for training runs: a run directory that resumes from another run's checkpoint, an msrun launch and
its environment, a run's metrics and checkpoint tensors, and the comparisons of two runs."""
import json
import os
import shutil
import sys


def fork_run(src_dir, step: int, dst_dir) -> None:
    """dst_dir (new) holds src_dir's checkpoint of `step` and its tokenizer, with `latest` naming that checkpoint:
    a Trainer on dst_dir resumes there."""
    name = f"ckpt-{step:08d}"
    os.makedirs(dst_dir)
    shutil.copytree(os.path.join(src_dir, name), os.path.join(dst_dir, name))
    shutil.copytree(os.path.join(src_dir, "tokenizer"), os.path.join(dst_dir, "tokenizer"))
    with open(os.path.join(dst_dir, "latest"), "w") as fh:
        fh.write(name + "\n")


def msrun_env():
    """The environment of an msrun launch from the tests: quiet logs, this venv's msrun / ascend-v4 on PATH, the
    test helpers importable (workers that run a test file import them as pytest does), and passive OpenMP waits
    (two ranks share the host's cores)."""
    bindir = os.path.dirname(sys.executable)
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, GLOG_v="3", OMP_WAIT_POLICY="PASSIVE", PATH=bindir + os.pathsep + os.environ["PATH"],
                PYTHONPATH=path)


def launch_msrun(cwd, args, logs, workers=2, timeout=1500):
    """Runs `msrun` with `workers` local workers on a free port (parallel test runs share the host), each worker
    running `args` (a script and its arguments: msrun runs `python SCRIPT args`), the workers' logs under `logs`,
    msrun_env()'s environment, at most `timeout` seconds. Fails the test with msrun's output and the tail of every
    worker log unless every worker exits 0. -> every log file under `logs`, concatenated."""
    import socket
    import subprocess
    import time
    msrun = shutil.which("msrun", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    assert msrun is not None, "msrun is part of mindspore: the venv is broken"
    with socket.socket() as sock:           # a port nobody holds now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t0 = time.time()
    p = subprocess.run(["timeout", str(timeout), msrun, f"--worker_num={workers}", f"--local_worker_num={workers}",
                        f"--master_port={port}", f"--log_dir={logs}", "--join=True", *map(str, args)],
                       env=msrun_env(), capture_output=True, text=True, timeout=timeout + 60, cwd=str(cwd))
    texts = [(f, open(os.path.join(logs, f)).read()) for f in sorted(os.listdir(logs))] if os.path.isdir(logs) else []
    tails = "".join(f"\n--- {f}\n" + t[-3000:] for f, t in texts)
    assert p.returncode == 0, f"msrun rc={p.returncode} after {time.time() - t0:.0f}s\n{p.stdout[-2000:]}{tails}"
    print(f"msrun {os.path.basename(str(logs))}: {time.time() - t0:.0f}s")
    return "".join(t for _, t in texts)


def run_metrics(out):
    """A run directory's metrics.jsonl as a list of dicts."""
    return [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]


def run_weights(out, step, what="model"):
    """The tensors of a run's checkpoint file `what` at `step`."""
    from safetensors.numpy import load_file
    return load_file(os.path.join(out, f"ckpt-{step:08d}", f"{what}.safetensors"))



def assert_runs_match(ref, par, steps):
    """A parallel run's logged steps equal the single-process run's: loss terms to 2e-5, grad norm to 1e-4,
    expert imbalance to 1e-6 (float32 summation order) -> (ref rows, par rows)."""
    import numpy as np
    a, b = run_metrics(ref), run_metrics(par)
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, steps + 1))
    for ra, rb in zip(a, b):
        for k in ("loss", "lm_loss", "mtp_loss", "balance_loss"):
            np.testing.assert_allclose(rb[k], ra[k], rtol=2e-5, err_msg=f"step {ra['step']} {k}")
        np.testing.assert_allclose(rb["grad_norm"], ra["grad_norm"], rtol=1e-4, err_msg=f"step {ra['step']}")
        np.testing.assert_allclose(rb["expert_imbalance"], ra["expert_imbalance"], rtol=1e-6)
    return a, b


def assert_weights_match(ref, par, step, atol):
    """A parallel run's model.safetensors at `step` holds the single-process run's tensors, full shapes (gathered
    on save, not a rank's slice), to 1e-4 relative + `atol` -> max |dw|."""
    import numpy as np
    wa, wb = run_weights(ref, step), run_weights(par, step)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wb[k].shape == wa[k].shape, k
        np.testing.assert_allclose(wb[k], wa[k], rtol=1e-4, atol=atol, err_msg=k)
    return max(float(np.abs(wa[k].astype(np.float64) - wb[k]).max()) for k in wa)


def assert_same_tensors(a, b, what=""):
    """Two {name: array} dicts hold the same names, dtypes, shapes and bits."""
    import numpy as np
    assert a.keys() == b.keys(), what
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, (what, k)
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{what} {k}")
