// OpDefs of the MoE custom ops (vendor "ascend_v4_moe") for ascend910b and ascend910_93, with shape and dtype
// inference. Inputs, outputs and attributes follow the aclnn ops they mirror, so a graph written against ours maps
// one-to-one onto aclnnMoeGatingTopK (+ hash), aclnnMoeInitRoutingV2, aclnnMoeFinalizeRoutingV2 and
// aclnnGroupedMatmul (split_item 3, group_type 0):
//   MoeGatingTopKAv4      x [T, E] f32, bias [E]?, input_ids [T]?, tid2eid [V, k]?  ->  y [T, k], expert_idx [T, k],
//                         out [T, E];  attrs k, k_group, group_count, group_select_mode, renorm, norm_type,
//                         out_flag, routed_scaling_factor, eps
//   MoeInitRoutingAv4     x [T, H], expert_idx [T, k]  ->  expanded_x, expanded_row_idx [T*k],
//                         expert_tokens_count_or_cumsum [E], expert_tokens_before_capacity [E];
//                         attrs active_num, expert_capacity, expert_num, drop_pad_mode,
//                         expert_tokens_count_or_cumsum_flag, expert_tokens_before_capacity_flag
//   MoeFinalizeRoutingAv4 expanded_x, expanded_row_idx, x1?, x2?, bias?, scales, expert_idx?  ->  out [T, H];
//                         attr drop_pad_mode
//   GroupedMatmulAv4      x [M, K], weight [E, K, N] / [E, N, K], group_list [E] int64  ->  y [M, N];
//                         attrs group_list_type, transpose_weight
#include <cstdint>

#include "../../../ascendc_common/op_host/host_steps.h"
#include "moe_host_shim.h"

namespace ge {
namespace {

using moe_av4_host::AttrBool;
using moe_av4_host::AttrInt;
using moe_av4_host::OptionalShape;
using moe_av4_host::RequiredShape;
using av4_host::SetShape;

// ------------------------------------------------------------------------------------------------ gating
// attrs: 0 k, 1 k_group, 2 group_count, 3 group_select_mode, 4 renorm, 5 norm_type, 6 out_flag,
//        7 routed_scaling_factor, 8 eps
graphStatus InferShapeGating(gert::InferShapeContext* context) {
  const gert::Shape* x = context->GetInputShape(0);
  if (x == nullptr || x->GetDimNum() != 2) return GRAPH_FAILED;
  const int64_t T = x->GetDim(0), E = x->GetDim(1), k = AttrInt(context, 0);
  if (k <= 0 || k > E) return GRAPH_FAILED;
  SetShape(context->GetOutputShape(0), {T, k});
  SetShape(context->GetOutputShape(1), {T, k});
  SetShape(context->GetOutputShape(2), {T, E});
  return GRAPH_SUCCESS;
}

graphStatus InferDtypeGating(gert::InferDataTypeContext* context) {
  context->SetOutputDataType(0, DT_FLOAT);
  context->SetOutputDataType(1, DT_INT32);
  context->SetOutputDataType(2, DT_FLOAT);
  return GRAPH_SUCCESS;
}

// ------------------------------------------------------------------------------------------------ init routing
// attrs: 0 active_num, 1 expert_capacity, 2 expert_num, 3 drop_pad_mode, 4 count_or_cumsum_flag, 5 before_flag
graphStatus InferShapeInitRouting(gert::InferShapeContext* context) {
  const gert::Shape* x = context->GetInputShape(0);
  const gert::Shape* idx = context->GetInputShape(1);
  if (x == nullptr || idx == nullptr || x->GetDimNum() != 2 || idx->GetDimNum() != 2) return GRAPH_FAILED;
  const int64_t T = x->GetDim(0), H = x->GetDim(1), K = idx->GetDim(1), N = T * K;
  const int64_t active = AttrInt(context, 0), C = AttrInt(context, 1), E = AttrInt(context, 2);
  if (idx->GetDim(0) != T || E <= 0) return GRAPH_FAILED;
  if (AttrInt(context, 3) == 1) {
    SetShape(context->GetOutputShape(0), {E, C, H});
  } else {
    SetShape(context->GetOutputShape(0), {active > 0 && active < N ? active : N, H});
  }
  SetShape(context->GetOutputShape(1), {N});
  SetShape(context->GetOutputShape(2), {E});
  SetShape(context->GetOutputShape(3), {E});
  return GRAPH_SUCCESS;
}

// expanded_x in x's dtype, the row index and the two histograms int32
graphStatus InferDtypeInitRouting(gert::InferDataTypeContext* context) {
  return av4_host::InferDtypes(context, 4, DT_INT32);
}

// ------------------------------------------------------------------------------------------------ finalize
// inputs: 0 expanded_x, 1 expanded_row_idx, 2 x1?, 3 x2?, 4 bias?, 5 scales, 6 expert_idx?
graphStatus InferShapeFinalize(gert::InferShapeContext* context) {
  const gert::Shape* ex = context->GetInputShape(0);
  const gert::Shape* scales = RequiredShape(context, 5);   // IR index (x1/x2/bias are optional)
  if (ex == nullptr || scales == nullptr || ex->GetDimNum() < 2 || scales->GetDimNum() != 2) return GRAPH_FAILED;
  const gert::Shape* x1 = OptionalShape(context, 2);
  if (x1 != nullptr && (x1->GetDimNum() != 2 || x1->GetDim(0) != scales->GetDim(0))) return GRAPH_FAILED;
  SetShape(context->GetOutputShape(0), {scales->GetDim(0), ex->GetDim(ex->GetDimNum() - 1)});
  return GRAPH_SUCCESS;
}

graphStatus InferDtypeFinalize(gert::InferDataTypeContext* context) { return av4_host::InferDtypes(context, 1); }

// ------------------------------------------------------------------------------------------------ grouped matmul
// attrs: 0 group_list_type, 1 transpose_weight
graphStatus InferShapeGmm(gert::InferShapeContext* context) {
  const gert::Shape* x = context->GetInputShape(0);
  const gert::Shape* w = context->GetInputShape(1);
  if (x == nullptr || w == nullptr || x->GetDimNum() != 2 || w->GetDimNum() != 3) return GRAPH_FAILED;
  const bool tw = AttrBool(context, 1);
  if ((tw ? w->GetDim(2) : w->GetDim(1)) != x->GetDim(1)) return GRAPH_FAILED;
  SetShape(context->GetOutputShape(0), {x->GetDim(0), tw ? w->GetDim(1) : w->GetDim(2)});
  return GRAPH_SUCCESS;
}

graphStatus InferDtypeGmm(gert::InferDataTypeContext* context) { return av4_host::InferDtypes(context, 1); }

}  // namespace
}  // namespace ge

namespace optiling {
ge::graphStatus MoeGatingTopKAv4Tiling(gert::TilingContext* context);
ge::graphStatus MoeInitRoutingAv4Tiling(gert::TilingContext* context);
ge::graphStatus MoeFinalizeRoutingAv4Tiling(gert::TilingContext* context);
ge::graphStatus GroupedMatmulAv4Tiling(gert::TilingContext* context);
}  // namespace optiling

namespace ops {

#define AV4_FLOAT_TYPES {ge::DT_FLOAT, ge::DT_FLOAT16, ge::DT_BF16}
#define AV4_ND3 {ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND}

class MoeGatingTopKAv4 : public moe_av4_host::OpDefBase {
 public:
  explicit MoeGatingTopKAv4(const char* name) : moe_av4_host::OpDefBase(name) {
    this->Input("x").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Input("bias").ParamType(OPTIONAL).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Input("input_ids").ParamType(OPTIONAL).DataType({ge::DT_INT32}).Format({ge::FORMAT_ND});
    this->Input("tid2eid").ParamType(OPTIONAL).DataType({ge::DT_INT32}).Format({ge::FORMAT_ND});
    this->Output("y").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Output("expert_idx").ParamType(REQUIRED).DataType({ge::DT_INT32}).Format({ge::FORMAT_ND});
    this->Output("out").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Attr("k").AttrType(REQUIRED).Int(6);
    this->Attr("k_group").AttrType(OPTIONAL).Int(1);
    this->Attr("group_count").AttrType(OPTIONAL).Int(1);
    this->Attr("group_select_mode").AttrType(OPTIONAL).Int(0);
    this->Attr("renorm").AttrType(OPTIONAL).Int(0);
    this->Attr("norm_type").AttrType(OPTIONAL).Int(2);
    this->Attr("out_flag").AttrType(OPTIONAL).Bool(true);
    this->Attr("routed_scaling_factor").AttrType(OPTIONAL).Float(1.0f);
    this->Attr("eps").AttrType(OPTIONAL).Float(1e-20f);
    this->SetInferShape(ge::InferShapeGating).SetInferDataType(ge::InferDtypeGating);
    this->AICore().SetTiling(optiling::MoeGatingTopKAv4Tiling).AddConfig("ascend910b").AddConfig("ascend910_93");
  }
};

class MoeInitRoutingAv4 : public moe_av4_host::OpDefBase {
 public:
  explicit MoeInitRoutingAv4(const char* name) : moe_av4_host::OpDefBase(name) {
    this->Input("x").ParamType(REQUIRED).DataType(AV4_FLOAT_TYPES).Format(AV4_ND3);
    this->Input("expert_idx").ParamType(REQUIRED).DataType({ge::DT_INT32, ge::DT_INT32, ge::DT_INT32}).Format(AV4_ND3);
    this->Output("expanded_x").ParamType(REQUIRED).DataType(AV4_FLOAT_TYPES).Format(AV4_ND3);
    this->Output("expanded_row_idx").ParamType(REQUIRED).DataType({ge::DT_INT32, ge::DT_INT32, ge::DT_INT32})
        .Format(AV4_ND3);
    this->Output("expert_tokens_count_or_cumsum").ParamType(REQUIRED)
        .DataType({ge::DT_INT32, ge::DT_INT32, ge::DT_INT32}).Format(AV4_ND3);
    this->Output("expert_tokens_before_capacity").ParamType(REQUIRED)
        .DataType({ge::DT_INT32, ge::DT_INT32, ge::DT_INT32}).Format(AV4_ND3);
    this->Attr("active_num").AttrType(OPTIONAL).Int(0);
    this->Attr("expert_capacity").AttrType(OPTIONAL).Int(0);
    this->Attr("expert_num").AttrType(REQUIRED).Int(0);
    this->Attr("drop_pad_mode").AttrType(OPTIONAL).Int(0);
    this->Attr("expert_tokens_count_or_cumsum_flag").AttrType(OPTIONAL).Int(1);
    this->Attr("expert_tokens_before_capacity_flag").AttrType(OPTIONAL).Bool(true);
    this->SetInferShape(ge::InferShapeInitRouting).SetInferDataType(ge::InferDtypeInitRouting);
    this->AICore().SetTiling(optiling::MoeInitRoutingAv4Tiling).AddConfig("ascend910b").AddConfig("ascend910_93");
  }
};

class MoeFinalizeRoutingAv4 : public moe_av4_host::OpDefBase {
 public:
  explicit MoeFinalizeRoutingAv4(const char* name) : moe_av4_host::OpDefBase(name) {
    this->Input("expanded_x").ParamType(REQUIRED).DataType(AV4_FLOAT_TYPES).Format(AV4_ND3);
    this->Input("expanded_row_idx").ParamType(REQUIRED).DataType({ge::DT_INT32, ge::DT_INT32, ge::DT_INT32})
        .Format(AV4_ND3);
    this->Input("x1").ParamType(OPTIONAL).DataType(AV4_FLOAT_TYPES).Format(AV4_ND3);
    this->Input("x2").ParamType(OPTIONAL).DataType(AV4_FLOAT_TYPES).Format(AV4_ND3);
    this->Input("bias").ParamType(OPTIONAL).DataType(AV4_FLOAT_TYPES).Format(AV4_ND3);
    this->Input("scales").ParamType(REQUIRED).DataType({ge::DT_FLOAT, ge::DT_FLOAT, ge::DT_FLOAT}).Format(AV4_ND3);
    this->Input("expert_idx").ParamType(OPTIONAL).DataType({ge::DT_INT32, ge::DT_INT32, ge::DT_INT32})
        .Format(AV4_ND3);
    this->Output("out").ParamType(REQUIRED).DataType(AV4_FLOAT_TYPES).Format(AV4_ND3);
    this->Attr("drop_pad_mode").AttrType(OPTIONAL).Int(2);
    this->SetInferShape(ge::InferShapeFinalize).SetInferDataType(ge::InferDtypeFinalize);
    this->AICore().SetTiling(optiling::MoeFinalizeRoutingAv4Tiling).AddConfig("ascend910b").AddConfig("ascend910_93");
  }
};

class GroupedMatmulAv4 : public moe_av4_host::OpDefBase {
 public:
  explicit GroupedMatmulAv4(const char* name) : moe_av4_host::OpDefBase(name) {
    const ge::DataType i64 = moe_av4_host::kDtInt64;
    this->Input("x").ParamType(REQUIRED).DataType(AV4_FLOAT_TYPES).Format(AV4_ND3);
    this->Input("weight").ParamType(REQUIRED).DataType(AV4_FLOAT_TYPES).Format(AV4_ND3);
    this->Input("group_list").ParamType(REQUIRED).DataType({i64, i64, i64}).Format(AV4_ND3);
    this->Output("y").ParamType(REQUIRED).DataType(AV4_FLOAT_TYPES).Format(AV4_ND3);
    this->Attr("group_list_type").AttrType(OPTIONAL).Int(0);
    this->Attr("transpose_weight").AttrType(OPTIONAL).Bool(false);
    this->SetInferShape(ge::InferShapeGmm).SetInferDataType(ge::InferDtypeGmm);
    this->AICore().SetTiling(optiling::GroupedMatmulAv4Tiling).AddConfig("ascend910b").AddConfig("ascend910_93");
  }
};

OP_ADD(MoeGatingTopKAv4);
OP_ADD(MoeInitRoutingAv4);
OP_ADD(MoeFinalizeRoutingAv4);
OP_ADD(GroupedMatmulAv4);

}  // namespace ops
