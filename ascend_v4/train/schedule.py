"""Learning-rate and MTP-loss-weight schedules (docs/training.md): linear warm-up from 0, optional constant phase, cosine
decay to a floor; MTP weight 0.3, lowered to 0.1 once the LR decay starts.

Step convention (shared with `optim.MuonAdamW`): `step` counts optimiser updates already done. The optimiser
increments its `step` Parameter first and then uses lr_at(step), so update t = 1, 2, ... runs with lr_at(t);
lr_at(0) = 0 is the start of the warm-up line and lr_at(warmup_steps) = peak_lr.

    lr_at(s) = peak·s/W                                   s < W                 (warm-up, W = warmup_steps)
             = peak                                       W <= s < D            (D = decay_start, default W)
             = floor + (peak−floor)·½(1 + cos(π·(s−D)/(T−D)))   D <= s < T      (T = total_steps)
             = floor                                      s >= T
    mtp_weight_at(s) = 0.3 while s <= D (LR still at peak), 0.1 once s > D (the LR has started to decay).

Graph form: `table()` is lr_at over 0..T as float32; `optim.MuonAdamW` keeps it as a constant Tensor and gathers
`table[min(step, T)]`, so the LR is computed inside the compiled step with no Python callback and no recompile.
`GraphSchedule` is the same lookup as a Cell returning (lr, mtp_weight) for a step Tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Tensor


@dataclass(frozen=True)
class Schedule:
    peak_lr: float
    total_steps: int
    warmup_steps: int = 2000
    min_lr: Optional[float] = None       # floor; default peak_lr / 10 (Flash 2.7e-4 -> 2.7e-5, Pro 2e-4 -> 2e-5)
    decay_start: Optional[int] = None    # first step of the cosine; default warmup_steps (no constant phase)
    mtp_weight: float = 0.3
    mtp_weight_decay: float = 0.1

    def __post_init__(self):
        if self.total_steps < 1 or self.warmup_steps < 0:
            raise ValueError(f"need total_steps >= 1 and warmup_steps >= 0, got {self.total_steps}, "
                             f"{self.warmup_steps}")
        if not self.warmup_steps <= self.start <= self.total_steps:
            raise ValueError(f"need warmup_steps <= decay_start <= total_steps, got {self.warmup_steps}, "
                             f"{self.start}, {self.total_steps}")
        if not 0 <= self.floor <= self.peak_lr:
            raise ValueError(f"need 0 <= min_lr <= peak_lr, got {self.floor}, {self.peak_lr}")

    @property
    def floor(self) -> float:
        return self.peak_lr / 10.0 if self.min_lr is None else float(self.min_lr)

    @property
    def start(self) -> int:
        return self.warmup_steps if self.decay_start is None else int(self.decay_start)

    # ------------------------------------------------------------------ NumPy (scalars or arrays of steps)
    def lr_at(self, step: Union[int, np.ndarray]) -> Union[float, np.ndarray]:
        s = np.asarray(step, dtype=np.float64)
        W, D, T = float(self.warmup_steps), float(self.start), float(self.total_steps)
        peak, floor = float(self.peak_lr), self.floor
        warm = peak * s / W if W > 0 else np.full_like(s, peak)
        frac = np.clip((s - D) / (T - D), 0.0, 1.0) if T > D else (s >= D).astype(np.float64)
        cos = floor + (peak - floor) * 0.5 * (1.0 + np.cos(np.pi * frac))
        out = np.where(s < W, warm, np.where(s < D, peak, cos))
        return float(out) if out.ndim == 0 else out

    def mtp_weight_at(self, step: Union[int, np.ndarray]) -> Union[float, np.ndarray]:
        s = np.asarray(step)
        out = np.where(s <= self.start, self.mtp_weight, self.mtp_weight_decay).astype(np.float64)
        return float(out) if out.ndim == 0 else out

    # ------------------------------------------------------------------ graph form
    def table(self) -> np.ndarray:
        """float32 [total_steps + 1]: lr_at(0..total_steps); steps beyond use the last entry (the floor)."""
        return np.asarray(self.lr_at(np.arange(self.total_steps + 1)), dtype=np.float32)

    def mtp_table(self) -> np.ndarray:
        return np.asarray(self.mtp_weight_at(np.arange(self.total_steps + 1)), dtype=np.float32)


def constant(lr: float) -> Schedule:
    """A constant LR (no warm-up, no decay): lr_at(s) = lr for every s."""
    return Schedule(peak_lr=float(lr), total_steps=1, warmup_steps=0, min_lr=float(lr), decay_start=1)


def flash(total_steps: int, warmup_steps: int = 2000, decay_start: Optional[int] = None) -> Schedule:
    """V4-Flash recipe: warm-up 2000 steps to 2.7e-4, cosine to 2.7e-5 (docs/training.md)."""
    return Schedule(2.7e-4, total_steps, warmup_steps, 2.7e-5, decay_start)


def pro(total_steps: int, warmup_steps: int = 2000, decay_start: Optional[int] = None) -> Schedule:
    """V4-Pro recipe: peak 2.0e-4, cosine to 2.0e-5 (docs/training.md)."""
    return Schedule(2.0e-4, total_steps, warmup_steps, 2.0e-5, decay_start)


def as_table(lr_schedule) -> np.ndarray:
    """float32 LR table from a Schedule, a number (constant LR) or a 1-D array indexed by step."""
    if isinstance(lr_schedule, Schedule):
        return lr_schedule.table()
    if isinstance(lr_schedule, (int, float)):
        return np.asarray([lr_schedule], dtype=np.float32)
    t = np.asarray(lr_schedule, dtype=np.float32).reshape(-1)
    if t.size == 0 or not np.all(np.isfinite(t)):
        raise ValueError("LR table must be non-empty and finite")
    return t


def lookup(table, step):
    """table[clip(step, 0, len-1)] for an integer step Tensor (graph-mode friendly: cast, min/max, gather)."""
    idx = ops.cast(step, ms.int32)
    idx = ops.minimum(ops.maximum(idx, 0), table.shape[0] - 1)
    return ops.gather(table, idx, 0)


class GraphSchedule(nn.Cell):
    """(lr, mtp_weight) float32 scalars for an integer step Tensor, usable inside ms.jit / GRAPH_MODE."""

    def __init__(self, schedule: Schedule):
        super().__init__()
        self.lr_table = Tensor(schedule.table(), ms.float32)
        self.mtp_table = Tensor(schedule.mtp_table(), ms.float32)

    def construct(self, step):
        return lookup(self.lr_table, step), lookup(self.mtp_table, step)


__all__ = ["Schedule", "constant", "flash", "pro", "as_table", "lookup", "GraphSchedule"]
