// OpDef of the mHC custom ops (vendor "ascend_v4_mhc"): HcPreAv4, HcHeadAv4, HcPostAv4 for ascend910b and
// ascend910_93, with shape/dtype inference. Inputs are those of ops/mhc/cpp.py's kernels, so the MindSpore
// wrappers (ops/mhc/ascendc/__init__.py) share one calling convention on CPU and Ascend: x is [T, hc, D]
// (leading dims flattened by the wrapper); cfg is a float32 tensor [iters, hc_eps, norm_eps] ([hc_eps, norm_eps]
// for the head) rather than attributes, read by the kernel's scalar unit.
#include <cstdint>

#include "../../../ascendc_common/op_host/host_steps.h"
#include "mhc_av4_tiling.h"
#include "register/op_def_registry.h"

namespace ge {
namespace {

using av4_host::SetShape;

// y [T, D], post [T, hc], comb [T, hc, hc], mix [T, M], rstd [T]  (head: y, mix, rstd)
graphStatus InferShapePreImpl(gert::InferShapeContext* context, bool head) {
  const gert::Shape* x = context->GetInputShape(0);
  const gert::Shape* fn = context->GetInputShape(1);
  if (x == nullptr || fn == nullptr || x->GetDimNum() != 3 || fn->GetDimNum() != 2) return GRAPH_FAILED;
  const int64_t T = x->GetDim(0), hc = x->GetDim(1), D = x->GetDim(2), M = fn->GetDim(0);
  size_t o = 0;
  SetShape(context->GetOutputShape(o++), {T, D});
  if (!head) {
    SetShape(context->GetOutputShape(o++), {T, hc});
    SetShape(context->GetOutputShape(o++), {T, hc, hc});
  }
  SetShape(context->GetOutputShape(o++), {T, M});
  SetShape(context->GetOutputShape(o++), {T});
  return GRAPH_SUCCESS;
}

graphStatus InferShapePre(gert::InferShapeContext* context) { return InferShapePreImpl(context, false); }
graphStatus InferShapeHead(gert::InferShapeContext* context) { return InferShapePreImpl(context, true); }

// y in x's dtype, the rest float32
graphStatus InferDataTypePre(gert::InferDataTypeContext* context) { return av4_host::InferDtypes(context, 5); }
graphStatus InferDataTypeHead(gert::InferDataTypeContext* context) { return av4_host::InferDtypes(context, 3); }

graphStatus InferShapePost(gert::InferShapeContext* context) {
  const gert::Shape* residual = context->GetInputShape(1);
  if (residual == nullptr || residual->GetDimNum() != 3) return GRAPH_FAILED;
  *context->GetOutputShape(0) = *residual;
  return GRAPH_SUCCESS;
}

graphStatus InferDataTypePost(gert::InferDataTypeContext* context) { return av4_host::InferDtypes(context, 1); }

}  // namespace
}  // namespace ge

namespace ops {

using av4_host::RequiredNd;

// Streams in float32 or bfloat16 (two kernel variants), everything else float32.
static const std::vector<ge::DataType> kStream = {ge::DT_FLOAT, ge::DT_BF16};
static const std::vector<ge::DataType> kF32 = {ge::DT_FLOAT, ge::DT_FLOAT};

class HcPreAv4 : public OpDef {
 public:
  explicit HcPreAv4(const char* name) : OpDef(name) {
    RequiredNd(this->Input("x"), kStream);
    RequiredNd(this->Input("fn"), kF32);
    RequiredNd(this->Input("scale"), kF32);
    RequiredNd(this->Input("base"), kF32);
    RequiredNd(this->Input("cfg"), kF32);
    RequiredNd(this->Output("y"), kStream);
    RequiredNd(this->Output("post"), kF32);
    RequiredNd(this->Output("comb"), kF32);
    RequiredNd(this->Output("mix"), kF32);
    RequiredNd(this->Output("rstd"), kF32);
    this->SetInferShape(ge::InferShapePre).SetInferDataType(ge::InferDataTypePre);
    this->AICore().SetTiling(optiling::HcPreAv4Tiling).AddConfig("ascend910b").AddConfig("ascend910_93");
  }
};

class HcHeadAv4 : public OpDef {
 public:
  explicit HcHeadAv4(const char* name) : OpDef(name) {
    RequiredNd(this->Input("x"), kStream);
    RequiredNd(this->Input("fn"), kF32);
    RequiredNd(this->Input("scale"), kF32);
    RequiredNd(this->Input("base"), kF32);
    RequiredNd(this->Input("cfg"), kF32);
    RequiredNd(this->Output("y"), kStream);
    RequiredNd(this->Output("mix"), kF32);
    RequiredNd(this->Output("rstd"), kF32);
    this->SetInferShape(ge::InferShapeHead).SetInferDataType(ge::InferDataTypeHead);
    this->AICore().SetTiling(optiling::HcHeadAv4Tiling).AddConfig("ascend910b").AddConfig("ascend910_93");
  }
};

class HcPostAv4 : public OpDef {
 public:
  explicit HcPostAv4(const char* name) : OpDef(name) {
    RequiredNd(this->Input("f"), kStream);
    RequiredNd(this->Input("residual"), kStream);
    RequiredNd(this->Input("post"), kF32);
    RequiredNd(this->Input("comb"), kF32);
    RequiredNd(this->Output("out"), kStream);
    this->SetInferShape(ge::InferShapePost).SetInferDataType(ge::InferDataTypePost);
    this->AICore().SetTiling(optiling::HcPostAv4Tiling).AddConfig("ascend910b").AddConfig("ascend910_93");
  }
};

OP_ADD(HcPreAv4);
OP_ADD(HcHeadAv4);
OP_ADD(HcPostAv4);

}  // namespace ops
