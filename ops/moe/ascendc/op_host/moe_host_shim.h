// Host-side helpers of the MoE ops that differ between a real CANN build and the CPU stand-in build
// (-DAV4_ASCENDC_STANDIN, ops/ascendc_common/host). Attributes and inputs use the CANN API in both builds (the
// stand-in models its typed attributes and IR-vs-instance input indices):
//   AttrInt/AttrFloat/AttrBool   ctx->GetAttrs()->GetAttrPointer<int64_t / float / bool>(attr index): the type
//                                must be the one the OpDef declares (Int / Float / Bool)
//   RequiredShape/OptionalShape  ctx->GetRequiredInputShape / GetOptionalInputShape(IR input index): never
//                                GetInputShape(i) past the first optional input (that index counts instances)
// The stand-in has no AIC core count, no L1/L0 sizes, no system-workspace size and no Matmul tiling API; with CANN
//   ReadPlatform        PlatformAscendC::GetCoreNumAiv/Aic, GetCoreMemSize(UB, L1, L0_A, L0_B, L0_C)
//   SysWorkspaceBytes   PlatformAscendC::GetLibApiWorkSpaceSize
//   BuildCubeTiling     matmul_tiling::MatmulApiTiling (SetAType/SetBType/SetCType/SetShape/SetOrgShape/
//                       SetBias/SetBufferSpace/SetFixSplit/GetTiling)
// and in the stand-in build the L1/L0 sizes are the 910B values (512 KB / 64 KB / 64 KB / 128 KB).
#pragma once
#include <cstddef>
#include <cstdint>

#include "register/op_def_registry.h"
#include "tiling/platform/platform_ascendc.h"
#ifndef AV4_ASCENDC_STANDIN
#include "tiling/tiling_api.h"
#endif

#include "../tiling/moe_tiling.h"

#ifdef AV4_ASCENDC_STANDIN
namespace AscendC {
namespace tiling {
struct TCubeTiling {  // host view of kernel_tiling.h's TCubeTiling (fields our code sets)
  int32_t usedCoreNum, M, N, Ka, Kb, singleCoreM, singleCoreN, singleCoreK, baseM, baseN, baseK, depthA1, depthB1,
      stepM, stepN, isBias, transLength, iterateOrder, shareMode, shareL1Size, shareL0CSize, shareUbSize, batchM,
      batchN, singleBatchM, singleBatchN, stepKa, stepKb, depthAL1CacheUB, depthBL1CacheUB, dbL0A, dbL0B, dbL0C;
};
}  // namespace tiling
}  // namespace AscendC
#endif

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
  moe_av4::MoePlatform p{};
  p.aivCores = plat.GetCoreNumAiv();
  p.aicCores = p.aivCores / 2;   // 910B / 910_93: one AIC per two AIV
  plat.GetCoreMemSize(platform_ascendc::CoreMemType::UB, p.ubBytes);
  p.l1Bytes = 524288;
  p.l0aBytes = 65536;
  p.l0bBytes = 65536;
  p.l0cBytes = 131072;
  return p;
}
inline uint64_t SysWorkspaceBytes(gert::TilingContext*) { return 16ULL << 20; }

inline bool BuildCubeTiling(gert::TilingContext*, const moe_av4::GroupedMatmulTilingData& g,
                            AscendC::tiling::TCubeTiling* cube) {
  *cube = AscendC::tiling::TCubeTiling{};
  cube->usedCoreNum = int32_t(g.usedCores);
  cube->M = int32_t(g.singleM);
  cube->N = int32_t(g.singleN);
  cube->Ka = cube->Kb = cube->singleCoreK = int32_t(g.k);
  cube->singleCoreM = int32_t(g.singleM);
  cube->singleCoreN = int32_t(g.singleN);
  cube->baseM = int32_t(g.baseM);
  cube->baseN = int32_t(g.baseN);
  cube->baseK = int32_t(g.baseK);
  cube->depthA1 = int32_t(g.depthA1);
  cube->depthB1 = int32_t(g.depthB1);
  cube->dbL0A = cube->dbL0B = 2;
  cube->dbL0C = 1;
  return true;
}

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

inline bool BuildCubeTiling(gert::TilingContext* ctx, const moe_av4::GroupedMatmulTilingData& g,
                            AscendC::tiling::TCubeTiling* cube) {
  platform_ascendc::PlatformAscendC plat(ctx->GetPlatformInfo());
  matmul_tiling::MatmulApiTiling api(plat);
  const auto dt = g.elemBytes == 4 ? matmul_tiling::DataType::DT_FLOAT
                  : ctx->GetInputDesc(0)->GetDataType() == ge::DT_BF16 ? matmul_tiling::DataType::DT_BF16
                                                                         : matmul_tiling::DataType::DT_FLOAT16;
  api.SetAType(matmul_tiling::TPosition::GM, matmul_tiling::CubeFormat::ND, dt, false);
  api.SetBType(matmul_tiling::TPosition::GM, matmul_tiling::CubeFormat::ND, dt, g.transposeW != 0);
  api.SetCType(matmul_tiling::TPosition::GM, matmul_tiling::CubeFormat::ND, dt);
  api.SetShape(g.singleM, g.singleN, g.k);
  api.SetOrgShape(g.m > 0 ? g.m : 1, g.n, g.k);
  api.SetBias(false);
  api.SetBufferSpace(-1, -1, -1);
  api.SetFixSplit(int32_t(g.baseM), int32_t(g.baseN), int32_t(g.baseK));
  return api.GetTiling(*cube) != -1;
}
#endif

}  // namespace moe_av4_host
