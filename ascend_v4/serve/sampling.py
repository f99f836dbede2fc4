"""Token sampling on the host: greedy, temperature, top-k, top-p (nucleus), seeded per sequence.

Each batch row draws from its own generator `default_rng([seed, row])`, so a row's tokens depend only on the seed,
its row index and its own logits — not on which other sequences share the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


class SamplingError(ValueError):
    """Sampling parameters that cannot define a distribution."""


@dataclass(frozen=True)
class SamplingParams:
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0            # 0 = off
    top_p: float = 1.0        # 1.0 = off
    seed: int = 0

    def validate(self) -> "SamplingParams":
        if not self.greedy and not (self.temperature > 0):
            raise SamplingError(f"temperature must be > 0 (use --greedy for argmax), got {self.temperature}")
        if self.top_k < 0:
            raise SamplingError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        return self

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.top_k == 1


def distribution(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The float64 probabilities the sampler draws from (after temperature, top-k, top-p); greedy -> one-hot."""
    z = np.asarray(logits, np.float64).reshape(-1)
    if params.is_greedy:
        p = np.zeros_like(z)
        p[int(np.argmax(z))] = 1.0
        return p
    z = z / params.temperature
    if params.top_k and params.top_k < z.size:
        kth = np.partition(z, -params.top_k)[-params.top_k]
        z = np.where(z >= kth, z, -np.inf)
    z = z - z.max()
    p = np.exp(z)
    p /= p.sum()
    if params.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        csum = np.cumsum(p[order])
        keep = int(np.searchsorted(csum, params.top_p) + 1)      # smallest prefix with mass >= top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[order[:keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return p


def draw(p: np.ndarray, rng: np.random.Generator) -> int:
    """Inverse-CDF draw from probabilities p (one uniform per token: reproducible for a given seed)."""
    c = np.cumsum(p)
    u = rng.random() * c[-1]
    return int(min(np.searchsorted(c, u, side="right"), p.size - 1))


class Sampler:
    """Per-row seeded sampler for a batch."""

    def __init__(self, params: SamplingParams, rows: int):
        self.params = params.validate()
        self.rngs = [np.random.default_rng([int(params.seed) & 0xFFFFFFFF, r]) for r in range(rows)]

    def sample(self, row: int, logits: np.ndarray) -> int:
        if self.params.is_greedy:
            return int(np.argmax(logits))
        return draw(distribution(logits, self.params), self.rngs[row])

    def accept_draft(self, row: int, logits: np.ndarray, draft: int) -> Optional[int]:
        """Speculative verification of a point-mass draft (the MTP proposal): accept with probability p(draft)
        (greedy: iff draft is the argmax). Returns None when accepted, else the replacement token drawn from p
        with the draft removed — together exactly a sample from p."""
        if self.params.is_greedy:
            t = int(np.argmax(logits))
            return None if t == draft else t
        p = distribution(logits, self.params)
        rng = self.rngs[row]
        if rng.random() < p[draft]:
            return None
        q = p.copy()
        q[draft] = 0.0
        if q.sum() <= 0:          # p was a point mass on the draft (cannot happen after the accept test)
            return draft
        return draw(q / q.sum(), rng)
