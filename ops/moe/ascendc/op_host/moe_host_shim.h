// Host-side helpers of the MoE ops that differ between a real CANN build and the CPU stand-in build
// (-DAV4_ASCENDC_STANDIN, ops/ascendc_common/host). Attributes and inputs use the CANN API in both builds (the
// stand-in models its typed attributes and IR-vs-instance input indices):
//   AttrInt/AttrFloat/AttrBool   ctx->GetAttrs()->GetAttrPointer<int64_t / float / bool>(attr index): the type
//                                must be the one the OpDef declares (Int / Float / Bool)
//   RequiredShape/OptionalShape  ctx->GetRequiredInputShape / GetOptionalInputShape(IR input index): never
//                                GetInputShape(i) past the first optional input (that index counts instances)
// The stand-in has no AIC core count, no L1/L0 sizes and no system-workspace size; with CANN
//   ReadPlatform        PlatformAscendC::GetCoreNumAiv/Aic, GetCoreMemSize(UB, L1, L0_A, L0_B, L0_C)
//   SysWorkspaceBytes   PlatformAscendC::GetLibApiWorkSpaceSize
// and in the stand-in build the L1/L0 sizes are the 910B values (512 KB / 64 KB / 64 KB / 128 KB).
#pragma once
#include <cstddef>
#include <cstdint>

#include "register/op_def_registry.h"
#include "tiling/platform/platform_ascendc.h"

#include "../tiling/moe_tiling.h"


namespace moe_av4_host {

template <class Ctx>
inline int64_t AttrInt(const Ctx* ctx, size_t i) {
  const int64_t* v = ctx->GetAttrs()->template GetAttrPointer<int64_t>(i);
  return v ? *v : 0;
}
template <class Ctx>
inline float AttrFloat(const Ctx* ctx, size_t i) {
  const float* v = ctx->GetAttrs()->template GetAttrPointer<float>(i);
  return v ? *v : 0.0f;
}
template <class Ctx>
inline bool AttrBool(const Ctx* ctx, size_t i) {
  const bool* v = ctx->GetAttrs()->template GetAttrPointer<bool>(i);
  return v ? *v : false;
}
inline const gert::Shape* OptionalShape(const gert::InferShapeContext* ctx, size_t ir) {
  return ctx->GetOptionalInputShape(ir);
}
inline const gert::Shape* OptionalShape(const gert::TilingContext* ctx, size_t ir) {
  const gert::StorageShape* s = ctx->GetOptionalInputShape(ir);
  return s ? &s->GetStorageShape() : nullptr;
}
inline const gert::Shape* RequiredShape(const gert::InferShapeContext* ctx, size_t ir) {
  return ctx->GetRequiredInputShape(ir);
}
inline const gert::Shape* RequiredShape(const gert::TilingContext* ctx, size_t ir) {
  const gert::StorageShape* s = ctx->GetRequiredInputShape(ir);
  return s ? &s->GetStorageShape() : nullptr;
}
using OpDefBase = ops::OpDef;

#ifdef AV4_ASCENDC_STANDIN
constexpr ge::DataType kDtInt64 = static_cast<ge::DataType>(9);   // ge::DT_INT64 (absent from the stand-in enum)

inline moe_av4::MoePlatform ReadPlatform(gert::TilingContext* ctx) {
  platform_ascendc::PlatformAscendC plat(ctx->GetPlatformInfo());
  uint64_t ub = 0;
  plat.GetCoreMemSize(platform_ascendc::CoreMemType::UB, ub);
  return moe_av4::Platform910B(plat.GetCoreNumAiv(), ub);
}
inline uint64_t SysWorkspaceBytes(gert::TilingContext*) { return 16ULL << 20; }

#else   // ---------------------------------------------------------------------------------- real CANN
constexpr ge::DataType kDtInt64 = ge::DT_INT64;

inline moe_av4::MoePlatform ReadPlatform(gert::TilingContext* ctx) {
  platform_ascendc::PlatformAscendC plat(ctx->GetPlatformInfo());
  moe_av4::MoePlatform p{};
  p.aivCores = plat.GetCoreNumAiv();
  p.aicCores = plat.GetCoreNumAic();
  plat.GetCoreMemSize(platform_ascendc::CoreMemType::UB, p.ubBytes);
  plat.GetCoreMemSize(platform_ascendc::CoreMemType::L1, p.l1Bytes);
  plat.GetCoreMemSize(platform_ascendc::CoreMemType::L0_A, p.l0aBytes);
  plat.GetCoreMemSize(platform_ascendc::CoreMemType::L0_B, p.l0bBytes);
  plat.GetCoreMemSize(platform_ascendc::CoreMemType::L0_C, p.l0cBytes);
  return p;
}
inline uint64_t SysWorkspaceBytes(gert::TilingContext* ctx) {
  platform_ascendc::PlatformAscendC plat(ctx->GetPlatformInfo());
  return plat.GetLibApiWorkSpaceSize();
}

#endif

}  // namespace moe_av4_host
