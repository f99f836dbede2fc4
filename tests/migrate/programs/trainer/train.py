"""A small CUDA-style DDP trainer with AMP (test program for the --apply behaviour test)."""
import argparse
import json
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

TRANSPORT_OF = {"cuda": "nvlink", "cpu": "shm"}  # a table keyed by vendor name, not a device


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


def pick_amp_dtype():
    # the half-migration trap: both calls must move to torch.npu together
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    dist.init_process_group(backend="nccl", init_method=os.environ["INIT_METHOD"], rank=0, world_size=1)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local_rank)
    device = torch.device(args.device, local_rank)
    torch.manual_seed(0)
    torch.cuda.manual_seed_all(0)
    amp_dtype = pick_amp_dtype()

    model = Net().to(device)
    model = DDP(model, device_ids=[local_rank])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.cuda.amp.GradScaler()
    losses = []
    for step in range(args.steps):
        x = torch.randn(8, 16, device=device)
        y = torch.randn(8, 4).cuda()
        with torch.autocast(device_type="cuda", dtype=amp_dtype):
            loss = F.mse_loss(model(x).float(), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if x.is_cuda:
            torch.cuda.synchronize()
        losses.append(loss.item())
    where = f"cuda:{torch.cuda.current_device()}"
    stats = torch.cuda.memory_stats()
    rng = torch.cuda.get_rng_state_all()
    on_gpu = model.module.fc1.weight.device.type == "cuda"
    with open(args.out, "w") as fh:
        json.dump({"losses": losses, "where": where, "stats": sorted(stats), "rng_states": len(rng),
                   "backend": dist.get_backend(), "transport": TRANSPORT_OF["cuda"], "on_gpu": on_gpu}, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
