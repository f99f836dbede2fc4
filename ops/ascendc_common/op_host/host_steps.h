// Steps the op_host code of every family (ops/<family>/ascendc/op_host/*.cpp) shares: tensor declarations, shape /
// dtype inference, reading the platform and writing a tiling. Header-only over CANN's register/op_def_registry.h and
// tiling/platform/platform_ascendc.h (or their stand-ins, ops/ascendc_common/host).
// An op's InferShape / InferDataType / tiling function stays in its family's file (the OpDef names it, the rule
// checks read it); these are the steps it is made of.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "aiv_platform.h"
#include "register/op_def_registry.h"
#include "tiling/platform/platform_ascendc.h"

namespace av4_host {

// *shape = dims
inline void SetShape(gert::Shape* shape, std::initializer_list<int64_t> dims) {
  shape->SetDimNum(dims.size());
  size_t i = 0;
  for (int64_t d : dims) shape->SetDim(i++, d);
}

// Output 0 takes input 0's dtype (the data stream), outputs 1 .. outputs-1 are `rest` (statistics, indices).
inline ge::graphStatus InferDtypes(gert::InferDataTypeContext* context, size_t outputs,
                                   ge::DataType rest = ge::DT_FLOAT) {
  context->SetOutputDataType(0, context->GetInputDataType(0));
  for (size_t i = 1; i < outputs; ++i) context->SetOutputDataType(i, rest);
  return ge::GRAPH_SUCCESS;
}

// A REQUIRED ND tensor of an OpDef with its dtype in each of the op's two kernel variants (float32 / bfloat16 streams).
inline void RequiredNd(ops::OpParamDef& p, const std::vector<ge::DataType>& types) {
  const std::vector<ge::Format> nd = {ge::FORMAT_ND, ge::FORMAT_ND};
  p.ParamType(ops::REQUIRED).DataType(types).Format(nd).UnknownShapeFormat(nd);
}

// *p = the AIV core count and UB size of the platform the tiling runs for (never hard-coded: 910B3/B4 have 40 AIV
// cores, B1/B2 and 910C dies 48); false when the context has no platform or it reports none.
inline bool ReadAivPlatform(gert::TilingContext* context, AivPlatform* p) {
  auto* info = context->GetPlatformInfo();
  if (info == nullptr) return false;
  platform_ascendc::PlatformAscendC ascendc(info);
  p->aivCores = ascendc.GetCoreNumAiv();
  ascendc.GetCoreMemSize(platform_ascendc::CoreMemType::UB, p->ubBytes);
  return p->aivCores > 0 && p->ubBytes > 0;
}

// Bytes of a float32 / bfloat16 stream element; 0 for any other dtype (the plain tiling then refuses the shape).
inline int32_t StreamElemBytes(ge::DataType dt) { return dt == ge::DT_FLOAT ? 4 : (dt == ge::DT_BF16 ? 2 : 0); }

// Writes a launch's tiling: the struct (fails when the framework's buffer is smaller), the block dim (AIV cores, or
// AIC + 2 AIV groups of a mixed kernel), the tiling key and the one workspace size in bytes.
template <class TilingData>
ge::graphStatus WriteTiling(gert::TilingContext* context, const TilingData& td, uint32_t blockDim, uint64_t tilingKey,
                            uint64_t workspaceBytes) {
  gert::TilingData* raw = context->GetRawTilingData();
  if (raw == nullptr || raw->GetCapacity() < sizeof(TilingData)) return ge::GRAPH_FAILED;
  std::memcpy(raw->GetData(), &td, sizeof(TilingData));
  raw->SetDataSize(sizeof(TilingData));
  context->SetBlockDim(blockDim);
  context->SetTilingKey(tilingKey);
  context->GetWorkspaceSizes(1)[0] = static_cast<size_t>(workspaceBytes);
  return ge::GRAPH_SUCCESS;
}

}  // namespace av4_host
