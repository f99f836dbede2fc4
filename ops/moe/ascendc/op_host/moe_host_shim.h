// Host-side helpers of the MoE ops that differ between a real CANN build and the CPU stand-in build
// (-DAV4_ASCENDC_STANDIN, ops/ascendc_common/host). The shared stand-in models no op attributes, no optional
// inputs, no AIC core count, no L1/L0 sizes, no system-workspace size and no Matmul tiling API; with CANN these
// wrappers are one-line calls of the real API:
//   AttrInt/AttrFloat   ctx->GetAttrs()->GetAttrPointer<T>(i)
//   OptionalShape       ctx->GetOptionalInputShape(i)
//   ReadPlatform        PlatformAscendC::GetCoreNumAiv/Aic, GetCoreMemSize(UB, L1, L0_A, L0_B, L0_C)
//   SysWorkspaceBytes   PlatformAscendC::GetLibApiWorkSpaceSize
//   BuildCubeTiling     matmul_tiling::MatmulApiTiling (SetAType/SetBType/SetCType/SetShape/SetOrgShape/
//                       SetBias/SetBufferSpace/SetFixSplit/GetTiling)
// In the stand-in build attributes live in a side table keyed by context (tests fill it with SetAttrs), and the
// platform's L1/L0 sizes default to the 910B values of the spec (512 KB / 64 KB / 64 KB / 128 KB) when the
// stand-in reports none.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

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

#ifdef AV4_ASCENDC_STANDIN
constexpr ge::DataType kDtInt64 = static_cast<ge::DataType>(9);   // ge::DT_INT64 (absent from the stand-in enum)

inline std::map<const void*, std::vector<double>>& AttrTable() {
  static std::map<const void*, std::vector<double>> table;
  return table;
}
inline void SetAttrs(const void* ctx, std::vector<double> values) { AttrTable()[ctx] = std::move(values); }
template <class Ctx>
inline int64_t AttrInt(const Ctx* ctx, size_t i) {
  return static_cast<int64_t>(AttrTable().at(static_cast<const void*>(ctx)).at(i));
}
template <class Ctx>
inline float AttrFloat(const Ctx* ctx, size_t i) {
  return static_cast<float>(AttrTable().at(static_cast<const void*>(ctx)).at(i));
}

// A stand-in input with no dims is "not given".
inline const gert::Shape* OptionalShape(const gert::InferShapeContext* ctx, size_t i) {
  if (i >= ctx->inputs_.size() || ctx->inputs_[i].GetDimNum() == 0) return nullptr;
  return ctx->GetInputShape(i);
}
inline const gert::Shape* OptionalShape(const gert::TilingContext* ctx, size_t i) {
  if (i >= ctx->inputs_.size() || ctx->inputs_[i].GetStorageShape().GetDimNum() == 0) return nullptr;
  return &ctx->GetInputShape(i)->GetStorageShape();
}

class OpAttrDef {
 public:
  OpAttrDef& AttrType(ops::Option) { return *this; }
  OpAttrDef& Int(int64_t v) {
    value_ = double(v);
    return *this;
  }
  OpAttrDef& Float(float v) {
    value_ = v;
    return *this;
  }
  OpAttrDef& Bool(bool v) {
    value_ = v ? 1.0 : 0.0;
    return *this;
  }
  double value_ = 0;
};

class OpDefBase : public ops::OpDef {
 public:
  explicit OpDefBase(const char* type) : ops::OpDef(type) {}
  OpAttrDef& Attr(const char* name) {
    order_.push_back(name);
    return attrs_[name];
  }
  std::map<std::string, OpAttrDef> attrs_;
  std::vector<std::string> order_;
};

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
inline const gert::Shape* OptionalShape(gert::InferShapeContext* ctx, size_t i) {
  return ctx->GetOptionalInputShape(i);
}
inline const gert::Shape* OptionalShape(gert::TilingContext* ctx, size_t i) {
  const gert::StorageShape* s = ctx->GetOptionalInputShape(i);
  return s ? &s->GetStorageShape() : nullptr;
}
using OpDefBase = ops::OpDef;

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
