// OpDef of the Engram custom ops (vendor "ascend_v4_engram"): EngramGateAv4 and EngramDequantAv4 for ascend910b and
// ascend910_93, with shape / dtype inference (ops/ascendc_common/op_host/host_steps.h). Inputs are those of the
// registry functions engram_gate / engram_dequant (ops/engram/reference.py), as the MindSpore binding
// (ops/engram/ascendc/binding.py) passes them: leading dims flattened, the gate weight q_weight * k_weight
// multiplied once in float32, alive as float32.
#include <cstdint>

#include "../../../ascendc_common/op_host/host_steps.h"
#include "engram_av4_tiling.h"
#include "register/op_def_registry.h"

namespace ge {
namespace {

using av4_host::SetShape;

// out [T, hc, D] = h's shape, in h's dtype
graphStatus InferShapeGate(gert::InferShapeContext* context) {
  const gert::Shape* h = context->GetInputShape(0);
  const gert::Shape* kv = context->GetInputShape(1);
  if (h == nullptr || kv == nullptr || h->GetDimNum() != 3 || kv->GetDimNum() != 2) return GRAPH_FAILED;
  if (kv->GetDim(1) != (h->GetDim(1) + 1) * h->GetDim(2)) return GRAPH_FAILED;
  *context->GetOutputShape(0) = *h;
  return GRAPH_SUCCESS;
}

graphStatus InferDataTypeGate(gert::InferDataTypeContext* context) { return av4_host::InferDtypes(context, 1); }

// y [N, L] = rows' shape; dtype from the dst_type attribute (0 float32, 1 bf16)
graphStatus InferShapeDequant(gert::InferShapeContext* context) {
  const gert::Shape* rows = context->GetInputShape(0);
  if (rows == nullptr || rows->GetDimNum() != 2) return GRAPH_FAILED;
  SetShape(context->GetOutputShape(0), {rows->GetDim(0), rows->GetDim(1)});
  return GRAPH_SUCCESS;
}

graphStatus InferDataTypeDequant(gert::InferDataTypeContext* context) {
  const int64_t* dst = context->GetAttrs()->GetAttrPointer<int64_t>(0);
  context->SetOutputDataType(0, (dst != nullptr && *dst == 1) ? DT_BF16 : DT_FLOAT);
  return GRAPH_SUCCESS;
}

}  // namespace
}  // namespace ge

namespace ops {

using av4_host::RequiredNd;

class EngramGateAv4 : public OpDef {
 public:
  explicit EngramGateAv4(const char* name) : OpDef(name) {
    RequiredNd(this->Input("h"), {ge::DT_FLOAT, ge::DT_BF16});
    RequiredNd(this->Input("kv"), {ge::DT_FLOAT, ge::DT_BF16});
    RequiredNd(this->Input("weight"), {ge::DT_FLOAT, ge::DT_FLOAT});
    RequiredNd(this->Input("alive"), {ge::DT_FLOAT, ge::DT_FLOAT});
    RequiredNd(this->Output("out"), {ge::DT_FLOAT, ge::DT_BF16});
    this->Attr("eps").AttrType(OPTIONAL).Float(1e-20f);
    this->SetInferShape(ge::InferShapeGate).SetInferDataType(ge::InferDataTypeGate);
    this->AICore().SetTiling(optiling::EngramGateAv4Tiling).AddConfig("ascend910b").AddConfig("ascend910_93");
  }
};

class EngramDequantAv4 : public OpDef {
 public:
  explicit EngramDequantAv4(const char* name) : OpDef(name) {
    RequiredNd(this->Input("rows"), {ge::DT_INT8, ge::DT_INT8});
    RequiredNd(this->Input("scales"), {ge::DT_FLOAT, ge::DT_FLOAT});
    RequiredNd(this->Output("y"), {ge::DT_FLOAT, ge::DT_BF16});
    this->Attr("dst_type").AttrType(OPTIONAL).Int(1);
    this->SetInferShape(ge::InferShapeDequant).SetInferDataType(ge::InferDataTypeDequant);
    this->AICore().SetTiling(optiling::EngramDequantAv4Tiling).AddConfig("ascend910b").AddConfig("ascend910_93");
  }
};

OP_ADD(EngramGateAv4);
OP_ADD(EngramDequantAv4);

}  // namespace ops
