// Tiling functions of the MoE custom ops: read shapes, attributes and the platform (core counts, UB/L1/L0 sizes
// from PlatformAscendC — never hard-coded), run the plain-C++ tiling of ../tiling/moe_tiling.cc, and write the
// tiling struct, block dim, tiling key (always 0: the dtype is DTYPE_X of the binary) and workspace sizes.
#include "../../../ascendc_common/op_host/host_steps.h"
#include "moe_host_shim.h"

namespace optiling {
namespace {

using moe_av4_host::AttrBool;
using moe_av4_host::AttrFloat;
using moe_av4_host::AttrInt;
using moe_av4_host::OptionalShape;
using moe_av4_host::RequiredShape;

int32_t ElemBytes(ge::DataType dt) { return dt == ge::DT_FLOAT ? 4 : 2; }

// the libraries' system workspace + the kernel's own
template <class TD>
ge::graphStatus Store(gert::TilingContext* context, const TD& td, uint32_t blockDim, uint64_t userWorkspace) {
  return av4_host::WriteTiling(context, td, blockDim, moe_av4::MOE_TILING_KEY,
                               moe_av4_host::SysWorkspaceBytes(context) + userWorkspace);
}

}  // namespace

ge::graphStatus MoeGatingTopKAv4Tiling(gert::TilingContext* context) {
  const gert::Shape& x = context->GetInputShape(0)->GetStorageShape();
  if (x.GetDimNum() != 2) return ge::GRAPH_FAILED;
  const gert::Shape* bias = OptionalShape(context, 1);
  const gert::Shape* table = OptionalShape(context, 3);
  const bool hashed = table != nullptr && OptionalShape(context, 2) != nullptr;
  moe_av4::MoeGatingTopKTilingData td;
  const char* why = nullptr;
  if (AttrInt(context, 4) != 0) return ge::GRAPH_FAILED;   // renorm 1 is not implemented
  if (!moe_av4::GatingTopKTiling(x.GetDim(0), x.GetDim(1), AttrInt(context, 0), int32_t(AttrInt(context, 5)),
                                 int32_t(AttrInt(context, 2)), int32_t(AttrInt(context, 1)),
                                 int32_t(AttrInt(context, 3)), bias != nullptr, hashed,
                                 hashed ? table->GetDim(1) : 0, AttrFloat(context, 7), AttrFloat(context, 8),
                                 ElemBytes(context->GetInputDesc(0)->GetDataType()),
                                 moe_av4_host::ReadPlatform(context), &td, &why))
    return ge::GRAPH_FAILED;
  return Store(context, td, uint32_t(td.split.usedCores), 0);
}

ge::graphStatus MoeInitRoutingAv4Tiling(gert::TilingContext* context) {
  const gert::Shape& x = context->GetInputShape(0)->GetStorageShape();
  const gert::Shape& idx = context->GetInputShape(1)->GetStorageShape();
  if (x.GetDimNum() != 2 || idx.GetDimNum() != 2) return ge::GRAPH_FAILED;
  const ge::DataType dt = context->GetInputDesc(0)->GetDataType();
  moe_av4::MoeInitRoutingTilingData td;
  const char* why = nullptr;
  if (!moe_av4::InitRoutingTiling(x.GetDim(0), idx.GetDim(1), x.GetDim(1), AttrInt(context, 2), AttrInt(context, 1),
                                  AttrInt(context, 0), int32_t(AttrInt(context, 3)), int32_t(AttrInt(context, 4)),
                                  ElemBytes(dt), moe_av4_host::ReadPlatform(context), &td, &why))
    return ge::GRAPH_FAILED;
  return Store(context, td, uint32_t(td.split.usedCores), td.workspaceBytes);
}

ge::graphStatus MoeFinalizeRoutingAv4Tiling(gert::TilingContext* context) {
  const gert::Shape& ex = context->GetInputShape(0)->GetStorageShape();
  const gert::Shape* scalesIr = RequiredShape(context, 5);   // IR index: x1/x2/bias before it are optional
  if (scalesIr == nullptr) return ge::GRAPH_FAILED;
  const gert::Shape& scales = *scalesIr;
  if (ex.GetDimNum() < 2 || scales.GetDimNum() != 2) return ge::GRAPH_FAILED;
  const size_t nd = ex.GetDimNum();
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < nd; ++i) rows *= ex.GetDim(i);
  const ge::DataType dt = context->GetInputDesc(0)->GetDataType();
  moe_av4::MoeFinalizeRoutingTilingData td;
  const char* why = nullptr;
  if (!moe_av4::FinalizeRoutingTiling(scales.GetDim(0), scales.GetDim(1), ex.GetDim(nd - 1), rows,
                                      int32_t(AttrInt(context, 0)), OptionalShape(context, 2) != nullptr,
                                      OptionalShape(context, 3) != nullptr, OptionalShape(context, 4) != nullptr,
                                      ElemBytes(dt), moe_av4_host::ReadPlatform(context), &td, &why))
    return ge::GRAPH_FAILED;
  return Store(context, td, uint32_t(td.split.usedCores), 0);
}

ge::graphStatus GroupedMatmulAv4Tiling(gert::TilingContext* context) {
  const gert::Shape& x = context->GetInputShape(0)->GetStorageShape();
  const gert::Shape& w = context->GetInputShape(1)->GetStorageShape();
  if (x.GetDimNum() != 2 || w.GetDimNum() != 3) return ge::GRAPH_FAILED;
  const bool tw = AttrBool(context, 1);
  const ge::DataType dt = context->GetInputDesc(0)->GetDataType();
  moe_av4::GroupedMatmulTilingData td;
  const char* why = nullptr;
  if (!moe_av4::GroupedMatmulTiling(x.GetDim(0), x.GetDim(1), tw ? w.GetDim(1) : w.GetDim(2), w.GetDim(0),
                                    int32_t(AttrInt(context, 0)), tw, ElemBytes(dt),
                                    moe_av4_host::ReadPlatform(context), &td, &why))
    return ge::GRAPH_FAILED;
  return Store(context, td, uint32_t(td.usedCores), 0);
}

}  // namespace optiling
