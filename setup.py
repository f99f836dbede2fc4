"""ascend-v4: DeepSeek-V4 on Huawei Ascend (MindSpore graph mode + CANN custom operators).

Import layout (one-way): ascend_v4.ops (ops/) <- ascend_v4 (model, checkpoint, runtime) <- ascend_v4.graph (graph/)
<- ascend_v4.cli; ascend_v4.tools (tools/) is the CUDA->Ascend migration toolkit and depends on nothing else.
"""
import os
import subprocess
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildWithKernels(build_py):
    """Compile the CPU C++ kernels (ops/*/cpu/*.cc) so no compiler is needed at run time."""

    def run(self):
        here = os.path.dirname(os.path.abspath(__file__))
        rc = subprocess.call([sys.executable, os.path.join(here, "ops", "build.py")])
        if rc != 0:
            print("warning: CPU kernels not built; the MindSpore composite backends will be used", file=sys.stderr)
        super().run()


setup(
    name="ascend-v4",
    version="0.1.0",
    description="DeepSeek-V4 (Flash/Pro) for Huawei Ascend 910B/910C on MindSpore, with a CPU reference backend",
    python_requires=">=3.9,<3.12",
    # ascend_v4.* from ascend_v4/, plus the three top-level folders mapped into the package
    packages=(find_packages(include=["ascend_v4", "ascend_v4.*"])
              + ["ascend_v4.ops." + p for p in find_packages("ops")] + ["ascend_v4.ops"]
              + ["ascend_v4.graph"]
              + ["ascend_v4.tools." + p for p in find_packages("tools")] + ["ascend_v4.tools"]),
    package_dir={
        "ascend_v4": "ascend_v4",
        "ascend_v4.ops": "ops",
        "ascend_v4.graph": "graph",
        "ascend_v4.tools": "tools",
    },
    package_data={"ascend_v4.tools.migrate": ["*.yaml", "*.md"], "ascend_v4.ops": ["*/cpu/*.so", "common_cpu/*.h"],
                  "ascend_v4.train.corpus": ["*.jsonl", "*.txt"], "ascend_v4.train": ["*.sh", "presets/*.yaml"]},
    cmdclass={"build_py": BuildWithKernels},
    install_requires=[
        "mindspore==2.10.0",
        "numpy>=1.25,<2",        # mindspore 2.10's C extensions break under numpy 2.x
        "click>=8.0",
        "pyyaml>=6.0",
        "sentencepiece>=0.2",
        "tokenizers>=0.15",
        "onnx>=1.15",
        "tqdm>=4.60",
        "tensorboardX>=2.6",     # train: TensorBoard event files
        "matplotlib>=3.7",       # `ascend-v4 plot`
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-timeout", "pytest-xdist>=3", "hypothesis>=6.100", "ml_dtypes>=0.4", "torch==2.13.0", "transformers==5.24.0",
                 "safetensors>=0.4",             # checks our reader/writer (checkpoint/safetensors_io.py) against the package
                 "onnxruntime==1.32.0",          # runs `export --format onnx` output
                 "mindstudio-probe==26.2.0",     # msprobe: `dump --format msprobe` + scripts/msprobe_reference_dump.py
                 "pandas>=2,<3"],                # msprobe's; pandas 3 needs numpy 2
        "bench": ["torch==2.13.0", "transformers==5.24.0", "psutil"],
    },
    entry_points={"console_scripts": ["ascend-v4=ascend_v4.cli:main"]},
)
