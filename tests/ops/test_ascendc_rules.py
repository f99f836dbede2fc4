"""CANN rules a compiler cannot see (ops/ascendc_common/ascendc_rules.py), checked over every family's op_host and
op_kernel sources. Each rule is shown to fire on a minimal family that reproduces the defect it was written for
(the forms the MoE and attention sources had before issue #15's fixes) and to pass on the corrected form."""
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "ops", "ascendc_common", "ascendc_rules.py")
_spec = importlib.util.spec_from_file_location("ascendc_rules", SCRIPT)
rules = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rules)


def test_project_sources_follow_every_rule():
    found = rules.check(os.path.join(ROOT, "ops"))
    assert found == [], "\n".join(f"{p}:{l}: [{r}] {m}" for p, l, r, m in found)


def test_cli_reports_and_exits_nonzero(tmp_path):
    ops = _family(tmp_path, kernel_body=_KERNEL.replace("PipeSync<HardEvent::MTE2_V>();",
                                                        "SetFlag<HardEvent::MTE2_V>(0); WaitFlag<HardEvent::MTE2_V>(0);"))
    out = subprocess.run([sys.executable, SCRIPT, ops], capture_output=True, text=True)
    assert out.returncode == 1 and "[event-id]" in out.stdout and "2 violation(s)" in out.stdout, out.stdout
    out = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "nope")], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("error:")


# ------------------------------------------------------------------------------------------ a minimal family
_HOST = """
namespace optiling {
ge::graphStatus FooTiling(gert::TilingContext* context) {
  const gert::StorageShape* s = context->GetRequiredInputShape(2);
  const bool tw = *context->GetAttrs()->GetAttrPointer<bool>(1);
  const int64_t k = *context->GetAttrs()->GetAttrPointer<int64_t>(0);
  context->SetTilingKey(FOO_KEY);
  return s && tw && k ? ge::GRAPH_SUCCESS : ge::GRAPH_FAILED;
}
}
namespace ops {
class FooAv4 : public OpDef {
 public:
  explicit FooAv4(const char* name) : OpDef(name) {
    this->Input("x").ParamType(REQUIRED).DataType({ge::DT_FLOAT});
    this->Input("bias").ParamType(OPTIONAL).DataType({ge::DT_FLOAT});
    this->Input("scales").ParamType(REQUIRED).DataType({ge::DT_FLOAT});
    this->Attr("k").AttrType(REQUIRED).Int(6);
    this->Attr("transpose").AttrType(OPTIONAL).Bool(false);
    this->AICore().SetTiling(optiling::FooTiling);
  }
};
OP_ADD(FooAv4);
}
"""

_KERNEL = """
#include "kernel_operator.h"
#include "foo_tiling_data.h"
using namespace AscendC;
constexpr uint64_t FOO_KEY = 0;
class FooKernel {
 public:
  __aicore__ inline void Init(GM_ADDR x, GM_ADDR y) {
    xGm_.SetGlobalBuffer((__gm__ float*)x);
    yGm_.SetGlobalBuffer((__gm__ float*)y);
    pipe_.InitBuffer(inQue_, 2, 1024);
    pipe_.InitBuffer(tmpBuf_, 1024);
    pipe_.InitBuffer(apeBuf_, 1024);
    tmp_ = tmpBuf_.Get<float>();
  }
  __aicore__ inline void Process(int32_t n) {
    for (int32_t i = 0; i < 4; ++i) {
      CopyIn(n);
      Compute(n);
    }
  }
  __aicore__ inline void CopyIn(int32_t n) {
    LocalTensor<float> ape = apeBuf_.Get<float>();
    PipeSync<HardEvent::V_MTE2>();
    DataCopyPad(ape, xGm_, DataCopyExtParams(1, n * 4, 0, 0, 0), DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
    LocalTensor<float> in = inQue_.AllocTensor<float>();
    DataCopyPad(in, xGm_, DataCopyExtParams(1, n * 4, 0, 0, 0), DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
    inQue_.EnQue(in);
  }
  __aicore__ inline void Compute(int32_t n) {
    LocalTensor<float> in = inQue_.DeQue<float>();
    LocalTensor<float> ape = apeBuf_.Get<float>();
    PipeSync<HardEvent::MTE2_V>();
    Abs(tmp_, in, n);
    PipeBarrier<PIPE_V>();
    Muls(tmp_, tmp_, -1.0f, n);
    PipeBarrier<PIPE_V>();
    Add(tmp_, tmp_, ape, n);
    inQue_.FreeTensor(in);
  }
  TPipe pipe_;
  TQue<TPosition::VECIN, 2> inQue_;
  TBuf<TPosition::VECCALC> tmpBuf_, apeBuf_;
  LocalTensor<float> tmp_;
  GlobalTensor<float> xGm_, yGm_;
};
extern "C" __global__ __aicore__ void foo_av4(GM_ADDR x, GM_ADDR y, GM_ADDR workspace, GM_ADDR tiling) {
  REGISTER_TILING_DEFAULT(FooTiling);
  GET_TILING_DATA_WITH_STRUCT(FooTiling, td, tiling);
  FooKernel op;
  op.Init(x, y);
  op.Process(td.n);
}
"""


def _family(tmp_path, host=_HOST, kernel_body=_KERNEL, extra=None):
    root = tmp_path / "ops" / "foo" / "ascendc"
    (root / "op_host").mkdir(parents=True)
    (root / "op_kernel").mkdir(parents=True)
    (root / "op_host" / "foo_av4.cpp").write_text(textwrap.dedent(host))
    (root / "op_kernel" / "foo_av4.cpp").write_text(textwrap.dedent(kernel_body))
    (root / "op_kernel" / "CMakeLists.txt").write_text("av4_opp_kernels(OPS\n  FooAv4 foo_av4.cpp\n)\n")
    for name, text in (extra or {}).items():
        (root / "op_kernel" / name).write_text(textwrap.dedent(text))
    return str(tmp_path / "ops")


def _rules_found(ops):
    return sorted({r for _, _, r, _ in rules.check(ops)})


def test_minimal_family_is_clean(tmp_path):
    assert rules.check(_family(tmp_path)) == []


MUTATIONS = {
    # rule: (where, old, new) -- each reproduces a defect the project's sources had
    "tiling-key": ("kernel", "constexpr uint64_t FOO_KEY = 0;", "constexpr uint64_t FOO_KEY = 1;"),
    "attr-type": ("host", "GetAttrPointer<bool>(1)", "GetAttrPointer<int64_t>(1)"),
    "input-index": ("host", "GetRequiredInputShape(2)", "GetInputShape(2)"),
    "input-index-kind": ("host", "GetRequiredInputShape(2)", "GetRequiredInputShape(1)"),
    "kernel-include": ("kernel", '#include "foo_tiling_data.h"', '#include "../op_host/foo_tiling_data.h"'),
    "register-tiling": ("kernel", "REGISTER_TILING_DEFAULT(FooTiling);", ""),
    "event-id": ("kernel", "PipeSync<HardEvent::MTE2_V>();", "SetFlag<HardEvent::MTE2_V>(0);"),
    "v-barrier": ("kernel", "Abs(tmp_, in, n);\n    PipeBarrier<PIPE_V>();", "Abs(tmp_, in, n);"),
    "v-barrier-call": ("kernel", "      Compute(n);\n", "      Compute(n);\n      Muls(tmp_, tmp_, 2.0f, n);\n"),
    "mte2-reload": ("kernel", "    PipeSync<HardEvent::V_MTE2>();\n", ""),
    "gm-roundtrip": ("kernel", "    inQue_.FreeTensor(in);",
                     "    DataCopyPad(yGm_, in, DataCopyExtParams(1, n * 4, 0, 0, 0));\n    inQue_.FreeTensor(in);"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_rule_fires_on_the_defect(tmp_path, name):
    where, old, new = MUTATIONS[name]
    host, kernel = _HOST, _KERNEL
    if where == "host":
        assert old in host
        host = host.replace(old, new)
    else:
        assert old in kernel
        kernel = kernel.replace(old, new)
    assert _rules_found(_family(tmp_path, host, kernel)) == [name.replace("-kind", "").replace("-call", "")]


@pytest.mark.parametrize("barrier", [True, False])
def test_v_barrier_follows_calls_into_the_shared_headers(tmp_path, barrier):
    """A helper of ops/ascendc_common/op_kernel (staged next to every family's kernels) that casts into a tensor it
    returns through a pointer: the caller's read of it needs the helper's closing barrier."""
    kernel = _KERNEL.replace("    Abs(tmp_, in, n);\n", "    LocalTensor<float> f;\n    ToF(in, n, &f);\n    Abs(tmp_, f, n);\n")
    ops = _family(tmp_path, kernel_body=kernel)
    shared = tmp_path / "ops" / "ascendc_common" / "op_kernel"
    shared.mkdir(parents=True)
    sync = "  PipeBarrier<PIPE_V>();\n" if barrier else ""
    (shared / "to_f.h").write_text("template <typename T>\n__aicore__ inline void ToF(const LocalTensor<T>& a, int32_t n, "
                                   "LocalTensor<float>* af) {\n  Cast(*af, a, RoundMode::CAST_NONE, n);\n" + sync + "}\n")
    found = rules.check(ops)
    assert [(os.path.basename(p), r) for p, _, r, _ in found] == ([] if barrier else [("foo_av4.cpp", "v-barrier")])
    assert barrier or "'f' is read by a vector op" in found[0][3]


def test_matmul_transpose_needs_istrans(tmp_path):
    mm = """
    #include "kernel_operator.h"
    using namespace AscendC;
    template <typename T>
    class G {
     public:
      using AType = MatmulType<TPosition::GM, CubeFormat::ND, T>;
      using BType = MatmulType<TPosition::GM, CubeFormat::ND, T, ISTRANS_B>;
      using MM = Matmul<AType, BType, AType>;
      __aicore__ inline void Process(MM& mm, bool tw) { mm.SetTensorB(wGm_, tw); }
      GlobalTensor<T> wGm_;
    };
    """
    for istrans, want in (("true", []), ("false", ["matmul-trans"])):
        d = tmp_path / istrans
        found = _rules_found(_family(d, kernel_body=_KERNEL, extra={"mm.h": mm.replace("ISTRANS_B", istrans)}))
        assert found == want, istrans
