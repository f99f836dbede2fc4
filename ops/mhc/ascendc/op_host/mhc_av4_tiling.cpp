// Host tiling of HcPreAv4 / HcHeadAv4 / HcPostAv4: reads the AIV core count and the UB size from the platform
// (av4_host::ReadAivPlatform), shapes and dtypes from the context, and delegates the decisions to the plain-C++
// tiling in ../tiling/hc_tiling.cc (unit-tested with g++).
#include "mhc_av4_tiling.h"

#include "../../../ascendc_common/op_host/host_steps.h"
#include "../tiling/hc_tiling.h"
#include "tiling/platform/platform_ascendc.h"

namespace optiling {
namespace {

// blockDim: AIV cores (hc_post) or core groups of one AIC + two AIV (the mixed hc_pre / hc_head); workspace: the
// libraries' system workspace + the kernel's own (fn split, partial projections), 0 + 0 for hc_post
template <typename Data>
ge::graphStatus Commit(gert::TilingContext* context, const Data& td, int32_t blockDim, uint64_t userWorkspace) {
  uint64_t sys = 0;
  if (userWorkspace > 0) {
    platform_ascendc::PlatformAscendC ascendc(context->GetPlatformInfo());
    sys = ascendc.GetLibApiWorkSpaceSize();
  }
  return av4_host::WriteTiling(context, td, static_cast<uint32_t>(blockDim), 0, sys + userWorkspace);
}

ge::graphStatus PreOrHead(gert::TilingContext* context, bool head) {
  av4_host::AivPlatform p{};
  if (!av4_host::ReadAivPlatform(context, &p)) return ge::GRAPH_FAILED;
  const gert::Shape& x = context->GetInputShape(0)->GetStorageShape();  // [T, hc, D]
  if (x.GetDimNum() != 3) return ge::GRAPH_FAILED;
  const int32_t xBytes = av4_host::StreamElemBytes(context->GetInputDesc(0)->GetDataType());
  mhc_av4::HcPreTilingData td{};
  const char* why = "";
  if (!mhc_av4::HcPreTiling(x.GetDim(0), x.GetDim(2), static_cast<int32_t>(x.GetDim(1)), xBytes, head, p, &td, &why))
    return ge::GRAPH_FAILED;
  return Commit(context, td, td.groups, static_cast<uint64_t>(td.wsBytes));
}

}  // namespace

ge::graphStatus HcPreAv4Tiling(gert::TilingContext* context) { return PreOrHead(context, false); }
ge::graphStatus HcHeadAv4Tiling(gert::TilingContext* context) { return PreOrHead(context, true); }

ge::graphStatus HcPostAv4Tiling(gert::TilingContext* context) {
  av4_host::AivPlatform p{};
  if (!av4_host::ReadAivPlatform(context, &p)) return ge::GRAPH_FAILED;
  const gert::Shape& res = context->GetInputShape(1)->GetStorageShape();  // residual [T, hc, D]
  if (res.GetDimNum() != 3) return ge::GRAPH_FAILED;
  const int32_t xBytes = av4_host::StreamElemBytes(context->GetInputDesc(0)->GetDataType());
  mhc_av4::HcPostTilingData td{};
  const char* why = "";
  if (!mhc_av4::HcPostTiling(res.GetDim(0), res.GetDim(2), static_cast<int32_t>(res.GetDim(1)), xBytes, p, &td, &why))
    return ge::GRAPH_FAILED;
  return Commit(context, td, td.usedCores, 0);
}

}  // namespace optiling
