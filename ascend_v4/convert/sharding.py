"""Tensor-parallel / expert-parallel split rules of DeepSeek's inference/convert.py (docs/formats.md), for a target
layout of TP size N and EP size M.

Rules, keyed on the module name (the component before `.weight`/`.scale`/`.bias`, else the last one):
* split dim 0 (row / vocab parallel): embed, head, wq_b (main and indexer), wo_a, attn_sink,
  weights_proj, and the shared expert's w1, w3;
* split dim 1 (input parallel): wo_b, the shared expert's w2;
* routed experts `ffn.experts.{e}.*` are never split but distributed by index: EP rank p keeps
  experts [p*E/M, (p+1)*E/M) (E = n_routed_experts);
* everything else (wq_a, wkv, norms, compressors, router gate/bias/tid2eid, hc_*, e_proj/h_proj; V4.1's vision
  tower and aligner) is replicated.

Rank layout: world size W = max(N, M); the larger must be a multiple of the smaller. Rank r has
tp_rank = r % N and ep_rank = r % M. With N == M (the official `--model-parallel`) this is exactly the
official layout: rank r holds the r-th slice of every split tensor and experts [r*E/W, (r+1)*E/W).
With N < M, the W/N ranks sharing a tp_rank hold identical attention/dense slices (data-parallel
attention); with M < N, the W/M ranks sharing an ep_rank hold the same experts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Tuple

from .errors import ConvertError

SPLIT_DIM0 = frozenset({"embed", "head", "wq_b", "wo_a", "attn_sink", "weights_proj", "w1", "w3"})
SPLIT_DIM1 = frozenset({"wo_b", "w2"})
_EXPERT_RE = re.compile(r"(?:^|\.)ffn\.experts\.(\d+)\.")
_LEAVES = ("weight", "scale", "bias")


def module_of(name: str) -> str:
    parts = name.split(".")
    return parts[-2] if len(parts) > 1 and parts[-1] in _LEAVES else parts[-1]


def routed_expert_index(name: str) -> Optional[int]:
    """e for `...ffn.experts.{e}....`, None for anything else (including shared_experts)."""
    m = _EXPERT_RE.search(name)
    return int(m.group(1)) if m else None


def split_dim(name: str) -> Optional[int]:
    """0, 1, or None (replicated) for a non-expert tensor name. DeepSeek-V4.1's vision tower and aligner are
    replicated (their `mlp.w1` / `w2` are not the text model's)."""
    if name.startswith(("vision.", "aligner.")):
        return None
    mod = module_of(name)
    if mod in SPLIT_DIM0:
        return 0
    if mod in SPLIT_DIM1:
        return 1
    return None


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    ep: int = 1

    def __post_init__(self):
        for k in ("tp", "ep"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConvertError(f"--{k} must be a positive integer, got {v!r}")
        hi, lo = max(self.tp, self.ep), min(self.tp, self.ep)
        if hi % lo:
            raise ConvertError(f"--tp {self.tp} and --ep {self.ep}: the larger must be a multiple of the smaller "
                               f"(world size = max(tp, ep) ranks)")

    @property
    def world(self) -> int:
        return max(self.tp, self.ep)

    def tp_rank(self, rank: int) -> int:
        return rank % self.tp

    def ep_rank(self, rank: int) -> int:
        return rank % self.ep

    def expert_range(self, ep_rank: int, n_experts: int) -> Tuple[int, int]:
        per = n_experts // self.ep
        return ep_rank * per, (ep_rank + 1) * per

    def local_experts(self, rank: int, n_experts: int) -> range:
        """Global indices of the routed experts rank `rank` holds (contiguous; local index = e - start)."""
        return range(*self.expert_range(self.ep_rank(rank), n_experts))

    def check_experts(self, n_experts: int) -> None:
        if n_experts % self.ep:
            raise ConvertError(f"--ep {self.ep} does not divide n_routed_experts ({n_experts}); choose an EP size "
                               f"that divides it")


def check_split(name: str, shape: Tuple[int, ...], dim: int, parts: int, unit: int = 1) -> int:
    """Size of one part; ConvertError when shape[dim] is not divisible (unit: packing granularity)."""
    if dim >= len(shape):
        raise ConvertError(f"tensor '{name}' of shape {list(shape)} has no dim {dim} to split for --tp {parts}")
    n = shape[dim]
    if n % parts or (n // parts) % unit:
        raise ConvertError(f"--tp {parts}: tensor '{name}' dim {dim} ({n}) does not split into {parts} equal "
                           f"parts{'' if unit == 1 else f' of a multiple of {unit}'}; choose a TP size that divides it")
    return n // parts
