"""A simulated accelerator host for the --apply behaviour test (test fixture, CPU only).

The same program is run twice: as written, on a simulated CUDA host, and after `migrate scan --apply`, on
a simulated Ascend host whose `torch_npu` is the recording stub next to this file. Both hosts compute on
the CPU; what differs is which device API answers. Every device decision the program makes (device
strings, set_device, bf16 support, autocast device and dtype, GradScaler on/off, process-group backend,
synchronize, memory queries) is recorded in one log. Real torch semantics are kept where they decide
behaviour: `torch.autocast(<other device>)` and `GradScaler(<other device>)` disable themselves, a CPU
build of torch answers `torch.cuda.*` on the Ascend host (is_available() False, ...), "nccl" is not
available on the Ascend host. A migration that changes behaviour therefore changes the log.
"""
from __future__ import annotations

import collections
import json

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

LOG = []
DEVICES = collections.Counter()  # (torch function, device string) -> calls
HOST = {"accel": None}


def record(*entry):
    LOG.append([str(e) if not isinstance(e, (int, float, bool, type(None))) else e for e in entry])


def dump(path):
    with open(path, "w") as fh:
        json.dump({"log": LOG, "devices": sorted([k[0], k[1], n] for k, n in DEVICES.items())}, fh, indent=1)


def _is_accel(dev) -> bool:
    if isinstance(dev, int):
        return True  # a bare ordinal means the accelerator
    if isinstance(dev, torch.device):
        return dev.type == HOST["accel"]
    return isinstance(dev, str) and dev.split(":")[0] == HOST["accel"]


class AcceleratorOnCPU(TorchFunctionMode):
    """Tensors 'on the accelerator' live on the CPU: the device argument of factories and `.to` is
    recorded and mapped to cpu; a device of the other vendor is left to fail as on real hardware."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", str(func))
        dev = kwargs.get("device")
        if dev is not None and _is_accel(dev):
            DEVICES[(name, str(dev))] += 1
            kwargs["device"] = "cpu"
        if name == "to" and len(args) > 1 and (isinstance(args[1], (str, torch.device)) and _is_accel(args[1])):
            DEVICES[(name, str(args[1]))] += 1
            args = (args[0], "cpu") + tuple(args[2:])
        return func(*args, **kwargs)


class RecordingAutocast:
    """torch.autocast with real enable/disable semantics, computing with CPU autocast."""

    def __init__(self, device_type="cuda", dtype=None, enabled=True, cache_enabled=None, api="torch.autocast"):
        self.effective = bool(enabled) and device_type == HOST["accel"]
        self.dtype = dtype or torch.bfloat16
        record(api, device_type, self.dtype, self.effective)
        self._ctx = torch.amp.autocast_mode.autocast("cpu", dtype=self.dtype, enabled=self.effective)

    def __enter__(self):
        return self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


class RecordingGradScaler:
    """A GradScaler with a constant power-of-two scale; enabled only for the host's accelerator, as
    torch's own GradScaler disables itself (with a warning) for a device that is not there."""

    SCALE = 2.0 ** 10

    def __init__(self, device="cuda", init_scale=None, enabled=True, api="torch.amp.GradScaler", **_kw):
        self.enabled = bool(enabled) and device == HOST["accel"]
        record(api, device, self.enabled)

    def scale(self, loss):
        return loss * self.SCALE if self.enabled else loss

    def step(self, opt):
        if self.enabled:
            for group in opt.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.div_(self.SCALE)
        record("GradScaler.step", self.enabled)
        return opt.step()

    def update(self):
        pass

    def is_enabled(self):
        return self.enabled


def device_module(accel: str):
    """The recording `torch.<accel>` API the programs use (names from torch_npu's surface)."""
    mod = {}
    state = {"device": 0}

    def rec(name, result=None, fn=None):
        def call(*a, **k):
            record(f"torch.{accel}.{name}", *a, *sorted(k.items()))
            return fn(*a, **k) if fn else result
        call.__name__ = name
        mod[name] = call

    rec("is_available", True)
    rec("device_count", 1)
    rec("is_bf16_supported", True)
    rec("set_device", fn=lambda d: state.__setitem__("device", int(str(d).split(":")[-1]) if not isinstance(d, int) else d))
    rec("current_device", fn=lambda: state["device"])
    rec("synchronize")
    rec("empty_cache")
    rec("memory_stats", fn=lambda *a, **k: {"allocated_bytes.all.current": 0})
    rec("max_memory_allocated", 0)
    rec("get_device_name", f"sim-{accel}")
    rec("manual_seed", fn=lambda s: torch.default_generator.manual_seed(s) and None)
    rec("manual_seed_all", fn=lambda s: torch.default_generator.manual_seed(s) and None)
    rec("get_rng_state_all", fn=lambda: [torch.get_rng_state()])

    class Stream:
        def __init__(self, *a, **k):
            record(f"torch.{accel}.Stream")

        def synchronize(self):
            record(f"torch.{accel}.Stream.synchronize")

    class StreamCtx:
        def __init__(self, s):
            record(f"torch.{accel}.stream")

        def __enter__(self):
            return self

        def __exit__(self, *e):
            return False

    mod["Stream"], mod["stream"] = Stream, StreamCtx
    amp = {
        "autocast": lambda *a, **k: RecordingAutocast(accel, *a, api=f"torch.{accel}.amp.autocast", **k),
        "GradScaler": lambda *a, **k: RecordingGradScaler(accel, *a, api=f"torch.{accel}.amp.GradScaler", **k),
    }
    return mod, amp


class _RecordingDDP(torch.nn.parallel.DistributedDataParallel):
    def __init__(self, module, device_ids=None, **kw):
        record("DistributedDataParallel", device_ids)
        super().__init__(module, device_ids=None, **kw)  # the module's tensors are on the CPU


def install(accel: str) -> None:
    """Machine-level setup shared by both hosts (what the hardware + a CPU build of torch would do)."""
    HOST["accel"] = accel
    torch.autocast = lambda device_type, *a, **k: RecordingAutocast(device_type, *a, **k)
    torch.amp.autocast = torch.autocast
    torch.amp.GradScaler = lambda device="cuda", *a, **k: RecordingGradScaler(device, *a, **k)
    torch.nn.parallel.DistributedDataParallel = _RecordingDDP
    real_init = dist.init_process_group

    def init_process_group(backend=None, *a, **k):
        record("init_process_group", backend)
        if accel == "cuda" and backend == "nccl":
            # the simulated GPUs talk through gloo (and say "nccl"); on the Ascend host "nccl" fails as for real
            real_get_backend = dist.get_backend
            dist.get_backend = lambda *ga, **gk: "nccl" if real_get_backend(*ga, **gk) == "gloo" else real_get_backend(*ga, **gk)
            backend = "gloo"
        return real_init(backend, *a, **k)

    dist.init_process_group = init_process_group
    AcceleratorOnCPU().__enter__()


def install_cuda_host() -> None:
    install("cuda")
    mod, amp = device_module("cuda")
    for k, v in mod.items():
        setattr(torch.cuda, k, v)
    for k, v in amp.items():
        setattr(torch.cuda.amp, k, v)

    def tensor_cuda(self, *a, **k):
        DEVICES[("Tensor.cuda", str(a[0]) if a else "")] += 1
        return self

    def module_cuda(self, *a, **k):
        DEVICES[("Module.cuda", str(a[0]) if a else "")] += 1
        return self

    torch.Tensor.cuda, torch.nn.Module.cuda = tensor_cuda, module_cuda
    torch.Tensor.is_cuda = property(lambda self: True)
