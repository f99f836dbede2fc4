// AV4SparseAttnSharedKV op definition, shape/dtype inference and tiling (host side).
//   query [B,S,H,D], kv [B,N,D] (shared key = value), sinks [H] float32, window_idx [B,S,W] int32,
//   cmp_idx [B,S,K] int32 (optional; absent + cmp_ratio > 0 = HCA: every visible compressed entry)
//   -> attn_out [B,S,H,D] (query dtype), softmax_lse [B,S,H] float32
//   attrs: scale_value, cmp_ratio (0), cmp_offset (-1 = S, the prefill layout [S raw rows ‖ entries]), start_pos (0)
// Unlike the 910B vendor SparseFlashAttention (no sinks there), the sink is part of the op.
#include "attention_host_common.h"

namespace optiling {

static ge::graphStatus AV4SparseAttnTiling(gert::TilingContext* ctx) {
  const gert::Shape& q = ctx->GetInputShape(0)->GetStorageShape();
  const gert::Shape& kv = ctx->GetInputShape(1)->GetStorageShape();
  const gert::Shape& win = ctx->GetInputShape(3)->GetStorageShape();
  const gert::StorageShape* cmp = ctx->GetOptionalInputShape(4);
  if (q.GetDimNum() != 4 || kv.GetDimNum() != 3 || win.GetDimNum() != 3) return ge::GRAPH_FAILED;
  av4_tiling::AttnShape s{};
  s.B = static_cast<uint32_t>(q.GetDim(0)), s.S = static_cast<uint32_t>(q.GetDim(1));
  s.H = static_cast<uint32_t>(q.GetDim(2)), s.D = static_cast<uint32_t>(q.GetDim(3));
  s.N = static_cast<uint32_t>(kv.GetDim(1)), s.W = static_cast<uint32_t>(win.GetDim(2));
  s.K = cmp ? static_cast<uint32_t>(cmp->GetStorageShape().GetDim(2)) : 0;
  s.scale = av4_host::AttrFloat(ctx, 0, 1.0f);
  s.ratio = cmp ? 0 : static_cast<uint32_t>(av4_host::AttrInt(ctx, 1, 0));
  const int64_t off = av4_host::AttrInt(ctx, 2, -1);
  s.cmpOffset = off < 0 ? s.S : static_cast<uint32_t>(off);
  s.startPos = static_cast<uint32_t>(av4_host::AttrInt(ctx, 3, 0));
  s.dtypeBytes = av4_host::DtypeBytes(ctx->GetInputDesc(0)->GetDataType());
  av4_tiling::SparseAttnTiling td;
  const char* why = "";
  if (!av4_tiling::TileSparseAttn(s, av4_host::QueryPlatform(ctx), &td, &why)) return ge::GRAPH_FAILED;
  // key 0 (float32): AIV-only, blockDim = vector cores; key 1 (bf16 / fp16): mixed AIC/AIV, blockDim = groups, the
  // Cube <-> vector S / P / O slots in the user workspace
  const bool cube = td.tilingKey == av4_tiling::ATTN_KEY_CUBE;
  return av4_host::Commit(ctx, td, td.usedCores, cube ? static_cast<uint64_t>(td.usedCores) * td.wsPerGroup : 0,
                          cube ? av4_tiling::ATTN_KEY_CUBE : av4_tiling::ATTN_KEY_VECTOR);
}

}  // namespace optiling

namespace ge {

static graphStatus AV4SparseAttnInferShape(gert::InferShapeContext* ctx) {
  const gert::Shape* q = ctx->GetInputShape(0);
  gert::Shape* out = ctx->GetOutputShape(0);
  gert::Shape* lse = ctx->GetOutputShape(1);
  out->SetDimNum(4);
  lse->SetDimNum(3);
  for (size_t i = 0; i < 4; ++i) out->SetDim(i, q->GetDim(i));
  for (size_t i = 0; i < 3; ++i) lse->SetDim(i, q->GetDim(i));
  return GRAPH_SUCCESS;
}

static graphStatus AV4SparseAttnInferDtype(gert::InferDataTypeContext* ctx) {
  ctx->SetOutputDataType(0, ctx->GetInputDataType(0));
  ctx->SetOutputDataType(1, DT_FLOAT);
  return GRAPH_SUCCESS;
}

}  // namespace ge

namespace ops {

class AV4SparseAttnSharedKV : public OpDef {
 public:
  explicit AV4SparseAttnSharedKV(const char* name) : OpDef(name) {
    Input("query").ParamType(REQUIRED).DataType({ge::DT_BF16, ge::DT_FLOAT16, ge::DT_FLOAT})
        .Format({ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND});
    Input("kv").ParamType(REQUIRED).DataType({ge::DT_BF16, ge::DT_FLOAT16, ge::DT_FLOAT})
        .Format({ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND});
    Input("sinks").ParamType(REQUIRED).DataType({ge::DT_FLOAT, ge::DT_FLOAT, ge::DT_FLOAT})
        .Format({ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND});
    Input("window_idx").ParamType(REQUIRED).DataType({ge::DT_INT32, ge::DT_INT32, ge::DT_INT32})
        .Format({ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND});
    Input("cmp_idx").ParamType(OPTIONAL).DataType({ge::DT_INT32, ge::DT_INT32, ge::DT_INT32})
        .Format({ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND});
    Output("attn_out").ParamType(REQUIRED).DataType({ge::DT_BF16, ge::DT_FLOAT16, ge::DT_FLOAT})
        .Format({ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND});
    Output("softmax_lse").ParamType(REQUIRED).DataType({ge::DT_FLOAT, ge::DT_FLOAT, ge::DT_FLOAT})
        .Format({ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND});
    Attr("scale_value").AttrType(REQUIRED).Float(1.0f);
    Attr("cmp_ratio").AttrType(OPTIONAL).Int(0);
    Attr("cmp_offset").AttrType(OPTIONAL).Int(-1);
    Attr("start_pos").AttrType(OPTIONAL).Int(0);
    SetInferShape(ge::AV4SparseAttnInferShape);
    SetInferDataType(ge::AV4SparseAttnInferDtype);
    AICore().SetTiling(optiling::AV4SparseAttnTiling);
    AICore().AddConfig("ascend910b");
    AICore().AddConfig("ascend910_93");
  }
};

OP_ADD(AV4SparseAttnSharedKV);

}  // namespace ops
