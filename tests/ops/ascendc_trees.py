"""Shared by the AscendC tests: the compiler and its flags for the plain-C++ checks (host tiling, op_host against the
stand-in CANN headers, kernel syntax checks), and for the tests that need the open CANN source trees the project's
real-header checker (ops/ascendc_common/real_headers_check.py, loaded from its file) and the skip marks that say how
to get the trees when they are absent."""
import importlib.util
import os
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "ops", "ascendc_common", "real_headers_check.py")
_spec = importlib.util.spec_from_file_location("real_headers_check", SCRIPT)
rhc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rhc)

COMMON = os.path.join(ROOT, "ops", "ascendc_common")
GXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")
CXX = [GXX or "g++", "-std=c++17", "-Wall", "-Wextra", "-Werror"]     # the plain-C++ checks: warnings are errors
needs_gxx = pytest.mark.skipif(GXX is None, reason="g++ not installed")


def needs_trees(purpose: str):
    """pytestmark for a module that compiles against the trees; `purpose` ends the skip reason."""
    return [
        needs_gxx,
        pytest.mark.skipif(rhc.find_trees() is None,
                           reason=f"CANN source trees not in {rhc.cache_dir()}: run `python "
                                  f"ops/ascendc_common/real_headers_check.py --setup [--clone]` {purpose}"),
    ]


def mutant_copy(family: str, name: str):
    """A fresh copy of ops/<family>/ascendc to mutate, at a stable path (the emulator build is cached by it): it keeps
    the tree's layout (ops/<family>/ascendc next to ops/ascendc_common, linked), so the relative includes of the
    family's sources into ops/ascendc_common resolve as in the repository. Returns the copy's ascendc directory."""
    base = os.path.join(rhc.generated_dir(), "emu_mutants", name)
    shutil.rmtree(base, ignore_errors=True)
    dst = os.path.join(base, "ops", family, "ascendc")
    shutil.copytree(os.path.join(ROOT, "ops", family, "ascendc"), dst, ignore=shutil.ignore_patterns("__pycache__"))
    os.symlink(COMMON, os.path.join(base, "ops", "ascendc_common"))
    return dst
