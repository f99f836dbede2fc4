"""The parity harness's backward check can fail (ops/parity.py): a backend whose gradients are scaled by 1.1, 2.0
or 0.0 fails every backward row, and a backend that leaks gradient where the true one is exactly zero (the
degenerate cases: no complete compressor block, no token routed to any group) fails those rows. Unmutated, every
row passes, so the tolerance sits between float32 noise and a 10% error."""
import math

import pytest

from ascend_v4.ops import parity

MUTATIONS = {"x1.1": lambda g: g * 1.1, "x2": lambda g: g * 2.0, "x0": lambda g: g * 0.0,
             "plus1e-2": lambda g: g + 1e-2}
DEGENERATE = {("compress_kv", "shorter_than_block"), ("grouped_matmul", "all_empty")}


def _check(rows):
    bwd = [r for r in rows if r.kind == "bwd"]
    assert bwd and all(r.ok for r in bwd), parity.format_table([r for r in bwd if not r.ok])
    for name in ("x1.1", "x2", "x0"):
        for r in rows:
            if r.kind == f"bwd[{name}]" and (r.op, r.case) not in DEGENERATE:
                assert not r.ok, f"{r.op}/{r.case} [{r.backend}] passes with gradients {name}"
    for r in rows:
        if (r.op, r.case) in DEGENERATE and r.kind.startswith("bwd"):
            # the true gradient is exactly zero: the backend's is too, and any leak fails
            assert r.max_abs == 0.0 if r.kind in ("bwd", "bwd[x1.1]", "bwd[x2]", "bwd[x0]") else not r.ok, r
        if (r.op, r.case) in DEGENERATE and r.kind == "fwd":
            assert r.ok and math.isfinite(r.max_abs)


def _one_case_per_op_plus_degenerate():
    seen, out = set(), []
    for c in parity.all_cases():
        if c.grad_args and (c.op not in seen or (c.op, c.name) in DEGENERATE):
            seen.add(c.op)
            out.append(c)
    return out


def test_backward_check_fails_mutated_gradients_one_case_per_op():
    cases = _one_case_per_op_plus_degenerate()
    assert {(c.op, c.name) for c in cases} >= DEGENERATE
    _check(parity.run(backend="cpp", cases=cases, grad_mutations=MUTATIONS))


@pytest.mark.slow
def test_backward_check_fails_mutated_gradients_every_row():
    """Every backward row of every family and backend (about 80 s on one core)."""
    _check(parity.run(grad_mutations=MUTATIONS))
