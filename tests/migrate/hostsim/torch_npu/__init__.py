"""Recording stand-in for torch_npu (test fixture; see ../machine.py). Like the real package, importing it
registers the "npu" device, torch.npu / torch.npu.amp, Tensor.npu()/Module.npu()/Tensor.is_npu and the
"hccl" process-group backend; unlike it, everything runs on the CPU and every call is recorded."""
import sys
import types

import torch
import torch.distributed as dist

import machine

if machine.HOST["accel"] != "npu":
    raise RuntimeError("torch_npu stub imported outside the simulated Ascend host")

torch.utils.rename_privateuse1_backend("npu")
_mod, _amp = machine.device_module("npu")
npu = types.ModuleType("torch.npu")
amp = types.ModuleType("torch.npu.amp")
npu.__dict__.update(_mod)
amp.__dict__.update(_amp)
npu.amp = amp
npu._is_in_bad_fork = lambda: False  # torch.manual_seed seeds the custom device through these two names
torch.npu = npu
sys.modules["torch.npu"], sys.modules["torch.npu.amp"] = npu, amp


def _tensor_npu(self, *a, **k):
    machine.DEVICES[("Tensor.npu", str(a[0]) if a else "")] += 1
    return self


def _module_npu(self, *a, **k):
    machine.DEVICES[("Module.npu", str(a[0]) if a else "")] += 1
    return self


torch.Tensor.npu, torch.nn.Module.npu = _tensor_npu, _module_npu
torch.Tensor.is_npu = property(lambda self: True)
dist.Backend.register_backend("hccl", lambda store, rank, size, timeout: dist.ProcessGroupGloo(store, rank, size, timeout),
                              devices=["cpu"])
