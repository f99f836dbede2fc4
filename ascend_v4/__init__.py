"""ascend-v4: DeepSeek-V4 on Huawei Ascend, MindSpore graph mode, with a CPU reference backend."""
import os as _os

# MindSpore's INFO/WARNING stream buries our output; real errors still print at level 3.
_os.environ.setdefault("GLOG_v", "3")

from .config import ModelConfig, ConfigError, PRESETS, load_config  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ModelConfig", "ConfigError", "PRESETS", "load_config", "__version__"]
