// AV4CompressKV op definition, inference and tiling (host side): the compressor's pooling + RMSNorm.
//   kv_proj [B,S,coff·c], score_proj [B,S,coff·c] (x·wkvᵀ, x·wgateᵀ from MatMul), ape [ratio,coff·c] float32,
//   norm_weight [c] float32 -> entries [B, S/ratio, c] (RoPE is the caller's); coff = 2 (overlap) iff ape is 2c wide
//   attrs: norm_eps
#include "attention_host_common.h"

namespace optiling {

static ge::graphStatus AV4CompressTiling(gert::TilingContext* ctx) {
  const gert::Shape& kv = ctx->GetInputShape(0)->GetStorageShape();
  const gert::Shape& ape = ctx->GetInputShape(2)->GetStorageShape();
  const gert::Shape& nw = ctx->GetInputShape(3)->GetStorageShape();
  if (kv.GetDimNum() != 3 || ape.GetDimNum() != 2 || nw.GetDimNum() != 1) return ge::GRAPH_FAILED;
  av4_tiling::CompressShape s{};
  s.B = static_cast<uint32_t>(kv.GetDim(0)), s.S = static_cast<uint32_t>(kv.GetDim(1));
  s.c = static_cast<uint32_t>(nw.GetDim(0)), s.ratio = static_cast<uint32_t>(ape.GetDim(0));
  s.overlap = kv.GetDim(2) == 2 * nw.GetDim(0) ? 1 : 0;
  if (kv.GetDim(2) != (s.overlap ? 2 : 1) * nw.GetDim(0) || ape.GetDim(1) != kv.GetDim(2)) return ge::GRAPH_FAILED;
  s.eps = av4_host::AttrFloat(ctx, 0, 1e-6f);
  s.dtypeBytes = av4_host::DtypeBytes(ctx->GetInputDesc(0)->GetDataType());
  av4_tiling::CompressTiling td;
  const char* why = "";
  if (!av4_tiling::TileCompress(s, av4_host::QueryPlatform(ctx), &td, &why)) return ge::GRAPH_FAILED;
  return av4_host::Commit(ctx, td, td.usedCores);
}

}  // namespace optiling

namespace ge {

static graphStatus AV4CompressInferShape(gert::InferShapeContext* ctx) {
  const gert::Shape* kv = ctx->GetInputShape(0);
  const gert::Shape* ape = ctx->GetInputShape(2);
  const gert::Shape* nw = ctx->GetInputShape(3);
  gert::Shape* out = ctx->GetOutputShape(0);
  out->SetDimNum(3);
  out->SetDim(0, kv->GetDim(0));
  out->SetDim(1, kv->GetDim(1) / ape->GetDim(0));
  out->SetDim(2, nw->GetDim(0));
  return GRAPH_SUCCESS;
}

static graphStatus AV4CompressInferDtype(gert::InferDataTypeContext* ctx) {
  ctx->SetOutputDataType(0, ctx->GetInputDataType(0));
  return GRAPH_SUCCESS;
}

}  // namespace ge

namespace ops {

class AV4CompressKV : public OpDef {
 public:
  explicit AV4CompressKV(const char* name) : OpDef(name) {
    Input("kv_proj").ParamType(REQUIRED).DataType({ge::DT_BF16, ge::DT_FLOAT16, ge::DT_FLOAT})
        .Format({ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND});
    Input("score_proj").ParamType(REQUIRED).DataType({ge::DT_BF16, ge::DT_FLOAT16, ge::DT_FLOAT})
        .Format({ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND});
    Input("ape").ParamType(REQUIRED).DataType({ge::DT_FLOAT, ge::DT_FLOAT, ge::DT_FLOAT})
        .Format({ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND});
    Input("norm_weight").ParamType(REQUIRED).DataType({ge::DT_FLOAT, ge::DT_FLOAT, ge::DT_FLOAT})
        .Format({ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND});
    Output("entries").ParamType(REQUIRED).DataType({ge::DT_BF16, ge::DT_FLOAT16, ge::DT_FLOAT})
        .Format({ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND});
    Attr("norm_eps").AttrType(OPTIONAL).Float(1e-6f);
    SetInferShape(ge::AV4CompressInferShape);
    SetInferDataType(ge::AV4CompressInferDtype);
    AICore().SetTiling(optiling::AV4CompressTiling);
    AICore().AddConfig("ascend910b");
    AICore().AddConfig("ascend910_93");
  }
};

OP_ADD(AV4CompressKV);

}  // namespace ops
