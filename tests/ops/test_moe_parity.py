"""MoE family parity: every backend (composite, cpp) of every MoE op against the float64 NumPy reference,
forward (elementwise; integer outputs exactly) and backward (directional derivatives vs central differences of
the reference), on random, skewed (all tokens to one expert), empty-expert, capacity-overflow, tie, hash-routing,
inactive-id (expert-parallel local view) and active_num cases (ops/moe/cases.py)."""
import pytest

ms = pytest.importorskip("mindspore")

from ascend_v4.ops import parity, registry  # noqa: E402
from ascend_v4.ops.moe import ALL_OPS, cpp  # noqa: E402
from ascend_v4.ops.moe.cases import CASES  # noqa: E402

BACKENDS = ["composite", pytest.param("cpp", marks=pytest.mark.skipif(
    not cpp.available(), reason="C++ library not built (python ops/build.py moe)"))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}-{c.name}" for c in CASES])
def test_parity(case, backend):
    rows = parity.run(backend=backend, cases=[case])
    assert rows, f"backend {backend} produced no rows"
    assert {r.kind for r in rows} == ({"fwd", "bwd"} if case.grad_args else {"fwd"})
    bad = [r for r in rows if not r.ok]
    assert not bad, parity.format_table(bad)


def test_every_op_has_cases_and_backends():
    ops_with_cases = {c.op for c in CASES}
    assert set(ALL_OPS) <= ops_with_cases
    for op in ALL_OPS:
        names = {b.name for b in registry.backends(op)}
        assert {"reference", "composite", "cpp"} <= names, (op, names)
    kinds = {c.name for c in CASES}
    for needed in ("ties_lowest_id", "hash", "droppad_overflow", "dropless_skewed", "dropless_empty_experts",
                   "inactive_ids"):
        assert needed in kinds
