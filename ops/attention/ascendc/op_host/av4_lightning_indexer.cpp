// AV4LightningIndexer op definition, inference and tiling (host side).
//   query [B,S,H,d], key [B,N,d] (compressed indexer keys), weights [B,S,H]
//   -> sparse_indices [B,S,min(sparse_count,N)] int32: top ids by Σ_h w·ReLU(q_h·k), ascending, -1 padded
//   attrs: sparse_count (top-k), cmp_ratio (visible iff id < floor((start_pos+t+1)/cmp_ratio)), start_pos
//   Mixed AIC/AIV kernel (op_kernel/lightning_indexer_v4.cpp): d a multiple of 16, H <= 64 (TileIndexer says why not)
#include "attention_host_common.h"

namespace optiling {

static ge::graphStatus AV4IndexerTiling(gert::TilingContext* ctx) {
  const gert::Shape& q = ctx->GetInputShape(0)->GetStorageShape();
  const gert::Shape& k = ctx->GetInputShape(1)->GetStorageShape();
  if (q.GetDimNum() != 4 || k.GetDimNum() != 3) return ge::GRAPH_FAILED;
  av4_tiling::IndexerShape s{};
  s.B = static_cast<uint32_t>(q.GetDim(0)), s.S = static_cast<uint32_t>(q.GetDim(1));
  s.H = static_cast<uint32_t>(q.GetDim(2)), s.d = static_cast<uint32_t>(q.GetDim(3));
  s.N = static_cast<uint32_t>(k.GetDim(1));
  s.topk = static_cast<uint32_t>(av4_host::AttrInt(ctx, 0, 512));
  s.ratio = static_cast<uint32_t>(av4_host::AttrInt(ctx, 1, 4));
  s.startPos = static_cast<uint32_t>(av4_host::AttrInt(ctx, 2, 0));
  s.dtypeBytes = av4_host::DtypeBytes(ctx->GetInputDesc(0)->GetDataType());
  av4_tiling::IndexerTiling td;
  const char* why = "";
  if (!av4_tiling::TileIndexer(s, av4_host::QueryPlatform(ctx), &td, &why)) return ge::GRAPH_FAILED;
  // mixed AIC/AIV kernel: blockDim = groups; the Cube -> vector score slots live in the user workspace
  return av4_host::Commit(ctx, td, td.usedGroups, static_cast<uint64_t>(td.usedGroups) * td.wsPerGroup);
}

}  // namespace optiling

namespace ge {

static graphStatus AV4IndexerInferShape(gert::InferShapeContext* ctx) {
  const gert::Shape* q = ctx->GetInputShape(0);
  const gert::Shape* k = ctx->GetInputShape(1);
  const int64_t* topk = ctx->GetAttrs()->GetAttrPointer<int64_t>(0);
  const int64_t n = k->GetDim(1), kk = (topk && *topk < n) ? *topk : n;
  gert::Shape* out = ctx->GetOutputShape(0);
  out->SetDimNum(3);
  out->SetDim(0, q->GetDim(0));
  out->SetDim(1, q->GetDim(1));
  out->SetDim(2, kk);
  return GRAPH_SUCCESS;
}

static graphStatus AV4IndexerInferDtype(gert::InferDataTypeContext* ctx) {
  ctx->SetOutputDataType(0, DT_INT32);
  return GRAPH_SUCCESS;
}

}  // namespace ge

namespace ops {

class AV4LightningIndexer : public OpDef {
 public:
  explicit AV4LightningIndexer(const char* name) : OpDef(name) {
    Input("query").ParamType(REQUIRED).DataType({ge::DT_BF16, ge::DT_FLOAT16, ge::DT_FLOAT})
        .Format({ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND});
    Input("key").ParamType(REQUIRED).DataType({ge::DT_BF16, ge::DT_FLOAT16, ge::DT_FLOAT})
        .Format({ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND});
    Input("weights").ParamType(REQUIRED).DataType({ge::DT_BF16, ge::DT_FLOAT16, ge::DT_FLOAT})
        .Format({ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND});
    Output("sparse_indices").ParamType(REQUIRED).DataType({ge::DT_INT32, ge::DT_INT32, ge::DT_INT32})
        .Format({ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND});
    Attr("sparse_count").AttrType(REQUIRED).Int(512);
    Attr("cmp_ratio").AttrType(REQUIRED).Int(4);
    Attr("start_pos").AttrType(OPTIONAL).Int(0);
    SetInferShape(ge::AV4IndexerInferShape);
    SetInferDataType(ge::AV4IndexerInferDtype);
    AICore().SetTiling(optiling::AV4IndexerTiling);
    AICore().AddConfig("ascend910b");
    AICore().AddConfig("ascend910_93");
  }
};

OP_ADD(AV4LightningIndexer);

}  // namespace ops
