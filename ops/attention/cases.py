"""Parity cases of the attention family: short sequences, block boundaries, topk > visible, first tokens."""
import numpy as np

from ..parity import Case
from .reference import compressed_indices, window_indices


def _compress(B, S, D, c, ratio):
    overlap = ratio == 4
    coff = 2 if overlap else 1

    def make(rng):
        return (rng.standard_normal((B, S, D)), rng.standard_normal((coff * c, D)) / np.sqrt(D),
                rng.standard_normal((coff * c, D)) / np.sqrt(D), rng.standard_normal((ratio, coff * c)) * 0.3,
                1 + 0.1 * rng.standard_normal(c)), {"ratio": ratio, "overlap": overlap, "norm_eps": 1e-6}
    return make


def _indexer(B, S, H, d, ratio, topk):
    def make(rng):
        N = S // ratio
        return (rng.standard_normal((B, S, H, d)), rng.standard_normal((B, N, d)), rng.standard_normal((B, S, H))), \
            {"ratio": ratio, "topk": topk}
    return make


def _attend(B, S, H, D, window, ratio=0, topk=None):
    def make(rng):
        n = S // ratio if ratio else 0
        kv = rng.standard_normal((B, S + n, D))
        q = rng.standard_normal((B, S, H, D))
        win = np.broadcast_to(window_indices(S, window), (B, S, min(S, window))).astype(np.int32)
        cmp = None
        if ratio:
            if topk:
                # a random subset of the visible entries, -1 padded, like the indexer produces
                vis = (np.arange(S) + 1) // ratio
                cmp = np.full((B, S, topk), -1, np.int32)
                for b in range(B):
                    for t in range(S):
                        k = min(topk, vis[t])
                        cmp[b, t, :k] = rng.permutation(vis[t])[:k]
            else:
                cmp = np.broadcast_to(compressed_indices(S, ratio), (B, S, n)).astype(np.int32)
            cmp = np.where(cmp >= 0, cmp + S, -1).astype(np.int32)
        return (q, kv, rng.standard_normal(H), win, cmp), {"scale": D ** -0.5}
    return make


CASES = [
    Case("compress_kv", "csa_overlap_S16", _compress(2, 16, 32, 8, 4), grad_args=(0, 1, 2, 3, 4)),
    Case("compress_kv", "csa_ragged_S18", _compress(1, 18, 32, 8, 4), grad_args=(0, 1, 2, 3)),
    Case("compress_kv", "hca_S32_r16", _compress(1, 32, 32, 8, 16), grad_args=(0, 1, 2, 3, 4)),
    Case("compress_kv", "one_block", _compress(1, 4, 16, 8, 4), grad_args=(0, 1)),
    Case("lightning_indexer", "S32_topk4", _indexer(2, 32, 4, 16, 4, 4)),
    Case("lightning_indexer", "topk_gt_visible", _indexer(1, 20, 2, 16, 4, 64)),
    Case("lightning_indexer", "S64_topk8", _indexer(1, 64, 4, 32, 4, 8)),
    Case("sparse_attention", "window_only", _attend(2, 12, 3, 16, 8), grad_args=(0, 1, 2)),
    Case("sparse_attention", "first_tokens", _attend(1, 3, 2, 16, 8), grad_args=(0, 1, 2)),
    Case("sparse_attention", "hca_dense", _attend(1, 40, 2, 16, 8, ratio=8), grad_args=(0, 1, 2)),
    Case("sparse_attention", "csa_topk", _attend(2, 24, 2, 16, 8, ratio=4, topk=3), grad_args=(0, 1, 2)),
]
