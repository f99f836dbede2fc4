"""Required dependencies fail the suite loudly instead of silently skipping the tests that need them.

Python packages from setup.py (install_requires and the `test` extra), the system tools `.ci/setup` installs
(g++, make, cmake), and the CPU C++ kernels it builds. Optional things (an Ascend device, CANN, msrun) are not
required; tests that need them skip with a reason (`pytest -rs` prints them)."""
import importlib
import shutil

import pytest

REQUIRED_MODULES = ["mindspore", "numpy", "safetensors", "yaml", "torch", "transformers", "ml_dtypes", "xdist"]
REQUIRED_TOOLS = ["g++", "make", "cmake"]


@pytest.mark.parametrize("name", REQUIRED_MODULES)
def test_required_python_package_is_installed(name):
    try:
        importlib.import_module(name)
    except ImportError as e:   # pragma: no cover - the failure this test exists for
        pytest.fail(f"required package {name!r} is missing ({e}); run `bash .ci/setup`")


@pytest.mark.parametrize("tool", REQUIRED_TOOLS)
def test_required_system_tool_is_installed(tool):
    assert shutil.which(tool), f"{tool} is not installed; run `bash .ci/setup` (it apt-get installs it)"


@pytest.mark.parametrize("family", ["mhc", "moe", "attention", "muon", "engram"])
def test_cpu_kernels_are_built(family):
    cpp = importlib.import_module(f"ascend_v4.ops.{family}.cpp")
    assert cpp.available(), f"{family} C++ kernels not built: run `.venv/bin/python ops/build.py {family}`"
