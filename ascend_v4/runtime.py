"""Process-level setup: the device switch (CPU / Ascend), graph mode, threads, quiet logs. Call before building Cells.

One function, `setup`, is how every command picks its device (`--device cpu|ascend`, or ASCEND_V4_DEVICE; the
msrun launcher passes it through). On Ascend it applies what MindSpore recommends for large MoE models
(docs/ascend.md): device_target Ascend on this rank's device, graph mode with jit level O1 (graph-kernel fusion),
`max_device_memory`, operator precision "must_keep_origin_dtype" (bf16 stays bf16; our float32 islands stay
float32), HCCL time-outs for multi-rank runs, and the registry target (SoC, CANN version, training or not), so every
op resolves its Ascend backend. Asked for Ascend where there is no NPU or no CANN, it raises DeviceError naming
what is missing: never a silent fall-back to CPU.

ASCEND_V4_EMULATE_ASCEND=1 with `--device ascend` runs the Ascend resolution on the CPU instead: every AscendC and
vendor (aclnn) call runs as a contract stand-in (ops/ascend_call.py). That is how CI exercises the Ascend path.
"""
from __future__ import annotations

import glob
import os
from typing import Optional

os.environ.setdefault("GLOG_v", "3")

DEVICES = ("cpu", "ascend")
_DONE = {}
_CHOSEN = [None]          # the device a command selected (--device); setup(None) uses it

# What MindSpore recommends for large MoE models on Ascend (mindformers' DeepSeek configs): O1 = graph-kernel fusion
# on top of the kernel-by-kernel backend; origin dtypes kept so bf16 matmuls stay bf16 and float32 islands float32.
JIT_LEVEL = "O1"
PRECISION_MODE = "must_keep_origin_dtype"
MAX_DEVICE_MEMORY = {"910b": "58GB", "910b4": "29GB", "910c": "58GB"}   # of 64 / 32 / 64 GB HBM per device (die)
HCCL_ENV = {"HCCL_CONNECT_TIMEOUT": "1200", "HCCL_EXEC_TIMEOUT": "1800"}


class DeviceError(RuntimeError):
    """The requested device cannot be used here (no NPU, no CANN, MindSpore without its Ascend plugin)."""


def select_device(device: Optional[str]) -> str:
    """Record the device a command asked for (None: ASCEND_V4_DEVICE, else cpu). Returns 'cpu' or 'ascend'."""
    d = (device or os.environ.get("ASCEND_V4_DEVICE") or "cpu").strip().lower()
    if d not in DEVICES:
        raise DeviceError(f"unknown device '{d}' (ASCEND_V4_DEVICE or --device): choose cpu or ascend")
    _CHOSEN[0] = d
    return d


def chosen_device() -> str:
    return _CHOSEN[0] or select_device(None)


def emulating() -> bool:
    return os.environ.get("ASCEND_V4_EMULATE_ASCEND", "") not in ("", "0")


def ascend_missing() -> Optional[str]:
    """None when this host can run on an Ascend NPU, else what is missing (for the `error:` line)."""
    missing = []
    if not (os.path.exists("/dev/davinci_manager") or glob.glob("/dev/davinci[0-9]*")):
        missing.append("no Ascend NPU driver (/dev/davinci_manager absent)")
    home = os.environ.get("ASCEND_HOME_PATH") or os.environ.get("ASCEND_TOOLKIT_HOME")
    if not (home and os.path.isdir(home)) and not os.environ.get("ASCEND_OPP_PATH"):
        missing.append("no CANN toolkit in the environment (ASCEND_HOME_PATH / ASCEND_OPP_PATH unset: "
                       "`source /usr/local/Ascend/ascend-toolkit/set_env.sh`)")
    if missing:
        return "; ".join(missing)
    try:
        import mindspore as ms
        ms.set_device("Ascend", _device_id())
    except Exception as e:  # pragma: no cover - needs a broken Ascend install
        return f"MindSpore cannot open the Ascend device ({str(e).splitlines()[0][:200]})"
    return None


def _device_id() -> int:
    # msrun / HCCL ranks: DEVICE_ID when given, else the local rank, else 0
    for k in ("DEVICE_ID", "MS_LOCAL_RANK_ID", "LOCAL_RANK"):
        if os.environ.get(k, "").isdigit():
            return int(os.environ[k])
    return 0


def soc_name() -> str:
    """910b / 910b4 / 910c from ASCEND_V4_SOC (the launcher's variable), default 910b."""
    return os.environ.get("ASCEND_V4_SOC", "910b").lower()


def cann_version() -> str:
    """Major.minor of the sourced CANN toolkit (its version.cfg / version.info), '' when unknown."""
    home = os.environ.get("ASCEND_HOME_PATH") or os.environ.get("ASCEND_TOOLKIT_HOME") or ""
    for f in glob.glob(os.path.join(home, "*", "version.cfg")) + glob.glob(os.path.join(home, "version.cfg")) + \
            glob.glob(os.path.join(home, "*version.info")):
        try:
            for line in open(f, encoding="utf-8", errors="replace"):
                if "version=" in line.lower():
                    v = line.split("=", 1)[1].strip().strip("[]")
                    return ".".join(v.split(".")[:2])
        except OSError:  # pragma: no cover
            pass
    return ""


def setup(device: Optional[str] = None, mode: str = "graph", threads: int = 0, deterministic: bool = True,
          training: bool = False) -> str:
    """Select the device and execution mode for this process. device: 'cpu' / 'ascend' (case-insensitive), None =
    the one the command selected (--device / ASCEND_V4_DEVICE). Returns MindSpore's device target ("CPU" or
    "Ascend"; "CPU" when the Ascend resolution is emulated). Raises DeviceError when Ascend cannot be used.

    threads=0 keeps MindSpore's default CPU pool; on shared 2-core machines 1-2 threads give the most stable
    timings. Never enables the compile cache: it computes wrong results on 2.10 CPU.
    """
    import mindspore as ms
    from .ops import registry

    dev = select_device(device) if device is not None else chosen_device()
    emulated = dev == "ascend" and emulating()
    # the mode is cheap to set and other code may have changed it: always apply; the device only once
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    key = (dev, emulated, threads, training)
    if _DONE.get("key") == key:
        return _DONE["target"]
    if dev == "ascend" and not emulated:
        missing = ascend_missing()
        if missing:
            raise DeviceError(f"--device ascend: {missing}; run on a 910B/910C host with CANN sourced, or use "
                              f"--device cpu")
        _ascend_context(ms)
        ms_target = "Ascend"
    else:
        try:
            ms.set_device("CPU")
        except RuntimeError:   # kernels already ran in this process: fine when the device is already the CPU
            if ms.get_context("device_target") != "CPU":
                raise
        if threads:
            try:
                ms.device_context.cpu.op_tuning.threads_num(threads)
            except Exception:  # already initialised: the pool size is fixed for the process
                pass
        ms_target = "CPU"
    if deterministic:
        try:
            ms.set_deterministic(True)
        except Exception:  # pragma: no cover
            pass
    if dev == "ascend":
        registry.set_target(registry.Target(device="Ascend", soc=soc_name(), cann=cann_version(),
                                            emulated=emulated, training=training))
    else:
        registry.set_target(registry.Target(device="CPU", training=training))
    _DONE.update(key=key, target=ms_target)
    return ms_target


def _ascend_context(ms) -> None:
    """MindSpore settings for V4 on a 910B/910C device (see the module docstring; docs/ascend.md)."""
    ms.set_device("Ascend", _device_id())
    ms.set_context(jit_config={"jit_level": JIT_LEVEL})
    mem = os.environ.get("ASCEND_V4_MAX_DEVICE_MEMORY") or MAX_DEVICE_MEMORY.get(soc_name(), "58GB")
    try:
        ms.runtime.set_memory(max_size=mem)
    except (AttributeError, TypeError):  # pragma: no cover - older MindSpore
        ms.set_context(max_device_memory=mem)
    try:
        ms.device_context.ascend.op_precision.precision_mode(PRECISION_MODE)
    except (AttributeError, TypeError):  # pragma: no cover - older MindSpore
        ms.set_context(ascend_config={"precision_mode": PRECISION_MODE})
    for k, v in HCCL_ENV.items():       # read when HCCL initialises (mindspore.communication.init)
        os.environ.setdefault(k, v)


def device_option(fn):
    """The shared `--device cpu|ascend` option (env ASCEND_V4_DEVICE) of every command that computes: records the
    choice with select_device before the command body runs; the command's setup(None, ...) then applies it."""
    import functools

    import click

    @click.option("--device", type=click.Choice(DEVICES, case_sensitive=False), default=None,
                  envvar="ASCEND_V4_DEVICE", show_envvar=True,
                  help="where to compute: cpu (reference backend) or ascend (910B/910C NPU; docs/ascend.md)")
    @functools.wraps(fn)
    def wrapper(*args, device=None, **kwargs):
        if select_device(device) == "ascend" and not emulating():
            missing = ascend_missing()          # fail before any work, never fall back to CPU
            if missing:
                raise DeviceError(f"--device ascend: {missing}; run on a 910B/910C host with CANN sourced, or use "
                                  f"--device cpu")
        return fn(*args, **kwargs)
    return wrapper
