"""Run a program on a simulated host: `python run.py cuda|npu LOG.json PROGRAM.py [ARGS...]` (test fixture)."""
import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # `machine`, and on the Ascend host the `torch_npu` stub

import machine  # noqa: E402

host, log_path, program = sys.argv[1], sys.argv[2], sys.argv[3]
if host == "cuda":
    machine.install_cuda_host()
elif host == "npu":
    machine.install("npu")  # torch_npu itself is imported by the (migrated) program
else:
    raise SystemExit(f"error: host must be cuda or npu, not {host!r}")
sys.argv = [program] + sys.argv[4:]
sys.path.insert(0, os.path.dirname(os.path.abspath(program)))
try:
    runpy.run_path(program, run_name="__main__")
finally:
    machine.dump(log_path)
