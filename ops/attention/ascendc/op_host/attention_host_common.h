// Shared host-side glue of the attention ops: platform query and tiling-data copy. Everything numeric lives in
// attention_tiling.h (plain C++, tested with g++); this file only talks to the CANN host API.
#pragma once
#include <cstring>

#ifndef AV4_SYNTAX_ONLY
#include "register/op_def_registry.h"
#include "tiling/platform/platform_ascendc.h"
#endif
#include "attention_tiling.h"

namespace av4_host {

// AIV core count and UB bytes from the platform (platform_config/Ascend910B*.ini / Ascend910_93*.ini): never hard-coded.
inline av4_tiling::Platform QueryPlatform(gert::TilingContext* ctx) {
  auto plat = platform_ascendc::PlatformAscendC(ctx->GetPlatformInfo());
  uint64_t ub = 0, l1 = 0;
  plat.GetCoreMemSize(platform_ascendc::CoreMemType::UB, ub);
  plat.GetCoreMemSize(platform_ascendc::CoreMemType::L1, l1);
  return av4_tiling::Platform{plat.GetCoreNumAiv(), ub, plat.GetCoreNumAic(), l1};
}

// usedCores: AIV cores for AIV-only kernels, groups (1 AIC + 2 AIV) for mixed ones; userWorkspace: bytes the kernel
// reads through GetUserWorkspace (after the library's system workspace)
template <typename TilingStruct>
inline ge::graphStatus Commit(gert::TilingContext* ctx, const TilingStruct& td, uint32_t usedCores,
                              uint64_t userWorkspace = 0, uint32_t tilingKey = 0) {
  auto* raw = ctx->GetRawTilingData();
  if (raw->GetCapacity() < sizeof(TilingStruct)) return ge::GRAPH_FAILED;
  std::memcpy(raw->GetData(), &td, sizeof(TilingStruct));
  raw->SetDataSize(sizeof(TilingStruct));
  ctx->SetBlockDim(usedCores ? usedCores : 1);
  ctx->SetTilingKey(tilingKey);
  size_t* ws = ctx->GetWorkspaceSizes(1);
  ws[0] = platform_ascendc::PlatformAscendC(ctx->GetPlatformInfo()).GetLibApiWorkSpaceSize() + userWorkspace;
  return ge::GRAPH_SUCCESS;
}

inline uint32_t DtypeBytes(ge::DataType t) { return t == ge::DT_FLOAT ? 4u : 2u; }

inline int64_t AttrInt(gert::TilingContext* ctx, size_t i, int64_t dflt) {
  const int64_t* p = ctx->GetAttrs()->GetAttrPointer<int64_t>(i);
  return p ? *p : dflt;
}

inline float AttrFloat(gert::TilingContext* ctx, size_t i, float dflt) {
  const float* p = ctx->GetAttrs()->GetAttrPointer<float>(i);
  return p ? *p : dflt;
}

}  // namespace av4_host
