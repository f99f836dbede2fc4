"""Parity cases of the attention family: short sequences, block boundaries, topk > visible, first tokens,
indexer with FP4 simulation (default) and exact scoring, decode positions, HCA without index lists. The decode-state compressor is checked in
tests/ops/test_attention_state.py (its score state holds -inf, which the harness metrics do not compare)."""
import numpy as np

from ..parity import Case
from .reference import compressed_indices, window_indices
from .rope import rope_table


def _rope(xshape, tshape, inverse=False, yarn=False):
    """x of xshape; doubled RoPE tables (cos2, sin2) for positions 0.., of shape tshape (width tshape[-1])."""
    def make(rng):
        n, w = int(np.prod(tshape[:-1])), tshape[-1]
        c, s = rope_table(n, w, 160000.0, 4096, 16.0) if yarn else rope_table(n, w, 10000.0)
        c2, s2 = np.repeat(c, 2, -1), np.repeat(s, 2, -1)
        s2[..., 0::2] *= -1.0
        return (rng.standard_normal(xshape), c2.reshape(tshape), s2.reshape(tshape)), {"inverse": inverse}
    return make


def _compress(B, S, D, c, ratio):
    overlap = ratio == 4
    coff = 2 if overlap else 1

    def make(rng):
        return (rng.standard_normal((B, S, D)), rng.standard_normal((coff * c, D)) / np.sqrt(D),
                rng.standard_normal((coff * c, D)) / np.sqrt(D), rng.standard_normal((ratio, coff * c)) * 0.3,
                1 + 0.1 * rng.standard_normal(c)), {"ratio": ratio, "overlap": overlap, "norm_eps": 1e-6}
    return make


def _indexer(B, S, H, d, ratio, topk, start_pos=0, fp4=True, scale_spread=False, extra_keys=0):
    """start_pos: an int, or per-row first positions (a cached step: int32 [B, 1]); extra_keys: key rows past the
    last visible one (a cached step reads its context bucket, which holds more rows than are visible)."""
    def make(rng):
        N = (int(np.max(start_pos)) + S) // ratio + extra_keys
        q = rng.standard_normal((B, S, H, d))
        k = rng.standard_normal((B, max(N, 1), d))
        if scale_spread:   # per-row magnitudes over many binades: exercises the E8M0 scale choice
            q = q * np.exp2(rng.integers(-6, 7, (B, S, H, 1)))
            k = k * np.exp2(rng.integers(-6, 7, (B, k.shape[1], 1)))
        kw = {"ratio": ratio, "topk": topk}
        if np.ndim(start_pos):
            kw["start_pos"] = np.asarray(start_pos, np.int32).reshape(B, 1)
        elif start_pos:
            kw["start_pos"] = start_pos
        if not fp4:
            kw["fp4"] = False      # exact scoring; without the key the op's default (FP4 simulation) runs
        return (q, k, rng.standard_normal((B, S, H))), kw
    return make


def _hca(B, S, H, D, window, ratio, start_pos=0):
    """Prefill layout [S raw rows ‖ entries] (start_pos 0) or decode layout [window ring ‖ entries]."""
    def make(rng):
        n = (start_pos + S) // ratio
        if start_pos == 0:
            win = np.broadcast_to(window_indices(S, window), (B, S, min(S, window))).astype(np.int32)
            raw = S
        else:   # decode: the ring holds min(window, start_pos + S) rows, every query sees all of them
            raw = min(window, start_pos + S)
            win = np.broadcast_to(np.arange(raw, dtype=np.int32), (B, S, raw)).copy()
        kv = rng.standard_normal((B, raw + n, D))
        kw = {"ratio": ratio, "scale": D ** -0.5}
        if start_pos:
            kw.update(cmp_offset=raw, start_pos=start_pos)
        return (rng.standard_normal((B, S, H, D)), kv, rng.standard_normal(H), win), kw
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
    Case("rope", "heads_prefill", _rope((2, 6, 3, 16), (1, 6, 1, 8)), grad_args=(0,)),
    Case("rope", "heads_inverse", _rope((2, 6, 3, 16), (1, 6, 1, 8), inverse=True), grad_args=(0,)),
    Case("rope", "rows_yarn", _rope((1, 9, 24), (1, 9, 8), yarn=True), grad_args=(0,)),
    Case("rope", "decode_full_width", _rope((2, 1, 4, 16), (2, 1, 1, 16)), grad_args=(0,)),
    Case("rope", "table_2d_broadcast", _rope((3, 5, 12), (5, 8), inverse=True), grad_args=(0,)),
    Case("compress_kv", "csa_overlap_S16", _compress(2, 16, 32, 8, 4), grad_args=(0, 1, 2, 3, 4)),
    Case("compress_kv", "csa_ragged_S18", _compress(1, 18, 32, 8, 4), grad_args=(0, 1, 2, 3)),
    Case("compress_kv", "hca_S32_r16", _compress(1, 32, 32, 8, 16), grad_args=(0, 1, 2, 3, 4)),
    Case("compress_kv", "one_block", _compress(1, 4, 16, 8, 4), grad_args=(0, 1)),
    Case("compress_kv", "shorter_than_block", _compress(1, 3, 16, 8, 4), grad_args=(0, 1)),
    Case("compress_kv", "csa_two_blocks_plus1", _compress(2, 9, 16, 8, 4), grad_args=(0, 1, 2, 3, 4)),
    Case("compress_kv", "hca_exact_block_r16", _compress(1, 16, 32, 8, 16), grad_args=(0, 2, 3)),
    # exact scoring (fp4=False): any head dim
    Case("lightning_indexer", "exact_S32_topk4", _indexer(2, 32, 4, 16, 4, 4, fp4=False)),
    Case("lightning_indexer", "exact_topk_gt_visible", _indexer(1, 20, 2, 16, 4, 64, fp4=False)),
    Case("lightning_indexer", "exact_S64_topk8", _indexer(1, 64, 4, 32, 4, 8, fp4=False)),
    Case("lightning_indexer", "exact_first_tokens_S3", _indexer(1, 3, 2, 16, 4, 4, fp4=False)),
    Case("lightning_indexer", "exact_block_boundary_S16", _indexer(2, 16, 2, 16, 4, 3, fp4=False)),
    Case("lightning_indexer", "exact_decode_start_pos", _indexer(1, 1, 4, 32, 4, 5, start_pos=41, fp4=False)),
    Case("lightning_indexer", "exact_chunk_start_pos", _indexer(1, 6, 4, 32, 4, 5, start_pos=18, fp4=False)),
    Case("lightning_indexer", "exact_per_row_start_pos",
         _indexer(3, 2, 4, 32, 4, 5, start_pos=(541, 6, 17), fp4=False, extra_keys=9)),
    # the default: Hadamard + FP4 q/k as DeepSeek's indexer (head dim a power of two, >= 32)
    Case("lightning_indexer", "fp4_S32_topk4", _indexer(2, 32, 4, 64, 4, 4)),
    Case("lightning_indexer", "fp4_spread_S40", _indexer(1, 40, 2, 128, 4, 6, scale_spread=True)),
    Case("lightning_indexer", "fp4_topk_gt_visible", _indexer(1, 20, 2, 32, 4, 64)),
    Case("lightning_indexer", "fp4_S64_topk8", _indexer(1, 64, 4, 32, 4, 8)),
    Case("lightning_indexer", "fp4_first_tokens_S3", _indexer(1, 3, 2, 32, 4, 4)),
    Case("lightning_indexer", "fp4_decode_start_pos", _indexer(1, 1, 4, 128, 4, 5, start_pos=41)),
    Case("lightning_indexer", "fp4_chunk_start_pos", _indexer(1, 6, 4, 128, 4, 5, start_pos=18)),
    Case("lightning_indexer", "fp4_per_row_start_pos", _indexer(2, 1, 4, 128, 4, 5, start_pos=(300, 9), extra_keys=7)),
    Case("sparse_attention", "window_only", _attend(2, 12, 3, 16, 8), grad_args=(0, 1, 2)),
    Case("sparse_attention", "first_tokens", _attend(1, 3, 2, 16, 8), grad_args=(0, 1, 2)),
    Case("sparse_attention", "hca_dense", _attend(1, 40, 2, 16, 8, ratio=8), grad_args=(0, 1, 2)),
    Case("sparse_attention", "csa_topk", _attend(2, 24, 2, 16, 8, ratio=4, topk=3), grad_args=(0, 1, 2)),
    Case("sparse_attention", "csa_topk_gt_visible", _attend(1, 14, 3, 16, 4, ratio=4, topk=8), grad_args=(0, 1, 2)),
    Case("hca_attention", "hca_S40_r8", _hca(1, 40, 2, 16, 8, 8), grad_args=(0, 1, 2)),
    Case("hca_attention", "hca_block_boundary", _hca(2, 32, 3, 16, 8, 8), grad_args=(0, 1, 2)),
    Case("hca_attention", "hca_shorter_than_block", _hca(1, 6, 2, 16, 4, 8), grad_args=(0, 1, 2)),
    Case("hca_attention", "hca_decode", _hca(1, 1, 4, 32, 8, 4, start_pos=37), grad_args=(0, 1, 2)),
]
