"""Every backend of the attention family (composite, cpp; ascendc is hardware-only) against the float64 reference:
forward, and backward as directional derivatives vs central differences of the reference (ops/parity.py)."""
import pytest

import mindspore  # noqa: F401,E402  (required: a missing one fails, tests/test_dependencies.py)

from ascend_v4.ops import parity, registry
from ascend_v4.ops.attention.cases import CASES

OPS = sorted({c.op for c in CASES})


@pytest.mark.parametrize("op", OPS)
def test_parity(op, ms_graph):
    # ms_graph: the runtime as the model runs it (graph mode, target set): the composites' backward is compiled,
    # and without a set target ops.common._on_cpu would reach registry._mindspore_device, which graph mode cannot
    rows = parity.run(op=op, cases=CASES)
    print("\n" + parity.format_table(rows))
    bad = [r for r in rows if not r.ok]
    assert rows and not bad, parity.format_table(bad)


def test_cpp_backend_is_built_and_preferred_on_cpu():
    for op in OPS:
        b = registry.resolve(op, device="CPU")
        assert b.name == "cpp", f"{op} resolves to {b.name}: run `python ops/build.py attention`"


def test_every_op_has_reference_composite_cpp():
    for op in OPS + ["compress_kv_step"]:
        names = {b.name for b in registry.backends(op)}
        assert {"reference", "composite", "cpp"} <= names, (op, names)
