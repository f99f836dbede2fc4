"""Context buckets smaller than a compression block: every `ctx_min` from 1 to above the largest ratio gives the
full recompute's logits at every position.

A step with context bucket ctx reads ctx // ratio compressed entries; while that is 0 the step reads no entry of a
layer, yet its compressors must still take every token into their state (a bucket crossing later pools those
tokens). The sequence (prompt 2, then decode to 24 tokens) completes the tiny config's first HCA block (ratio 16)
and six CSA blocks (ratio 4) while the buckets grow 1, 2, 4, 8, 16, 32. On the code before the fix a compressor
whose layer read no entry in a step never took that step's token (ctx_min=1: 0.16 relative logit error from
position 3, the end of the first CSA block, up to 0.53). One Engine serves every ctx_min: buckets are powers of two,
so the graphs of the smaller ctx_min values serve the larger ones too, and the prompt goes through the same T = 1
graphs (prefill_chunk=1): six compiles in all.
"""
import numpy as np
import pytest
from helpers import rel_l2_rows

pytestmark = pytest.mark.slow          # six decode-graph compiles (~45 s on a quiet 2-core machine)

S, PROMPT = 24, 2


@pytest.fixture(scope="module")
def seq_and_recompute(ms_graph, tiny_cfg, tiny_weights):
    from ascend_v4.graph.forward import build_forward
    seq = np.random.default_rng(17).integers(2, tiny_cfg.vocab_size, (1, S))
    return seq[0], build_forward(tiny_cfg, tiny_weights, max_seq_len=S)(seq)["logits"][0]


def test_every_short_ctx_min_matches_full_recompute(tiny_cfg, tiny_weights, seq_and_recompute):
    from ascend_v4.serve import Engine
    seq, recompute = seq_and_recompute
    eng = Engine(tiny_cfg, tiny_weights, max_batch=1, max_len=32, prefill_chunk=1, ctx_min=1)
    top = max(tiny_cfg.compress_ratios) + 1
    for ctx_min in range(1, top + 1):
        eng.ctx_min = ctx_min
        got = [eng.prefill([seq[:PROMPT]])[0]]
        for t in range(PROMPT, S):
            got.append(eng.decode_step(np.array([seq[t]]))[0])
        rel = rel_l2_rows(np.stack(got), recompute[PROMPT - 1:])
        assert rel.max() < 2e-5, (ctx_min, int(np.argmax(rel)), float(rel.max()))
    # the buckets crossed (1 and 2 read no entry at all, 4 and 8 no HCA entry)
    assert sorted(k[2] for k in eng._graphs) == [1, 2, 4, 8, 16, 32]
