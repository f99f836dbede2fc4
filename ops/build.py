"""Build the CPU C++ kernels of every op family: ops/<family>/cpu/*.cc -> ops/<family>/cpu/_<family>_cpu.so.

Run by setup.py at install time and by `python -m ascend_v4.ops.build` (CI, after editing a kernel).
No compiler is needed at run time: a missing library just means the registry falls back to the composite.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import List

HERE = os.path.dirname(os.path.abspath(__file__))
FAMILIES = ("mhc", "moe", "attention", "muon", "engram")
CXXFLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-march=x86-64-v3", "-ffp-contract=off",
            "-Wall", "-Wextra", "-Werror=return-type"]


def library_path(family: str) -> str:
    return os.path.join(HERE, family, "cpu", f"_{family}_cpu.so")


def _sources(family: str) -> List[str]:
    d = os.path.join(HERE, family, "cpu")
    if not os.path.isdir(d):
        return []
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".cc"))


def _flags() -> List[str]:
    flags = list(CXXFLAGS)
    if os.uname().machine not in ("x86_64", "AMD64"):
        flags.remove("-march=x86-64-v3")
    return flags


def build(family: str, cxx: str = None, quiet: bool = False) -> str:
    srcs = _sources(family)
    if not srcs:
        return ""
    cxx = cxx or os.environ.get("CXX") or shutil.which("g++") or "c++"
    out = library_path(family)
    tmp = out + ".tmp"
    cmd = [cxx, *_flags(), "-I", os.path.join(HERE, "common_cpu"), *srcs, "-o", tmp]
    if not quiet:
        print(" ".join(cmd))
    subprocess.run(cmd, check=True)
    os.replace(tmp, out)        # a half-linked library never sits at the path the loader opens
    return out


def main(argv=None) -> int:
    fams = (argv if argv is not None else sys.argv[1:]) or list(FAMILIES)
    for f in fams:
        if f not in FAMILIES:
            print(f"unknown op family '{f}'; choose from {', '.join(FAMILIES)}", file=sys.stderr)
            return 2
        try:
            path = build(f)
        except (subprocess.CalledProcessError, FileNotFoundError) as e:
            print(f"building the {f} CPU kernels failed ({e}); install g++ (apt-get install g++) and rerun "
                  f"`python -m ascend_v4.ops.build {f}`", file=sys.stderr)
            return 1
        if path:
            print(f"built {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
