"""ascend-v4: DeepSeek-V4 on Huawei Ascend, MindSpore graph mode, with a CPU reference backend."""
import os as _os

# MindSpore's INFO/WARNING stream buries our output; real errors still print at level 3.
_os.environ.setdefault("GLOG_v", "3")
# Our C++ kernels use OpenMP next to MindSpore's own thread pool; libgomp's default spin-waiting makes the two
# fight for the cores (a tiny forward measured 444 ms spinning vs 16 ms passive on 2 cores). Must be set before
# libgomp loads, i.e. before mindspore is imported.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .config import ModelConfig, ConfigError, PRESETS, load_config  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ModelConfig", "ConfigError", "PRESETS", "load_config", "__version__"]
